"""7. Abuse (pipelines/bench/faults/abuse.py): per-key rate limit and per-worker concurrency cap (429 with
Retry-After), random keys all 401 (logged by key id, counted), random paths leave /metrics bounded."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import abuse
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_limits_refusals_and_bounded_metrics(fault_context):
    fault = abuse.run(fault_context)
    assert_ok(fault)
    assert fault.figures["random_keys_401"] == fault_context.params.abuse_keys and fault.figures["cap_429"] > 0
