"""The fault scenarios of `shopfusion bench faults` (pipelines/bench/faults/) on the tests' tiny bundle, with
smaller loads than the benchmark's: the same code measures both."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import FaultContext, FaultParams
from tests.conftest import TINY_SAMPLE

# the benchmark's scenarios, scaled to 2 CI cores and a few seconds each
TEST_FAULTS = FaultParams(workers=2, clients=8, load_seconds=8.0, kill_every_seconds=4.0, fuzz_examples=60,
                          slow_headers=200, slow_bodies=40, abuse_keys=300, abuse_paths=1000,
                          pipeline={"sample": TINY_SAMPLE})


@pytest.fixture
def fault_context(tiny_bundle, tmp_path):
    return FaultContext(tiny_bundle["bundle"], tmp_path, TEST_FAULTS)


def assert_ok(fault) -> None:
    failed = {name: holds for name, holds in fault.checks.items() if not holds}
    assert fault.ok, f"failed checks {failed}; figures {fault.figures}"
