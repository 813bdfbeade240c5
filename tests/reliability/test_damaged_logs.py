"""1. Damaged feedback logs under a running 2-worker server (pipelines/bench/faults/logs.py): torn and garbage
lines are skipped, logged with their byte offsets and counted; a truncated file's offsets are recovered;
learning and monitoring read on."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import logs
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_torn_garbage_and_truncated_logs_stall_nothing(fault_context):
    fault = logs.run(fault_context)
    assert_ok(fault)
    assert fault.figures["monitored_lists"] >= logs.ROUNDS  # at least the lists served after the truncation
