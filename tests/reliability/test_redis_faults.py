"""3. Redis paused and dropped under load, down at start, and a corrupted SQLite tier
(pipelines/bench/faults/redis.py), against real redis-server processes and a 2-worker server."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import redis
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_redis_outages_cost_no_error_and_little_latency(fault_context):
    fault = redis.run(fault_context)
    assert_ok(fault)
    assert fault.figures["down_at_start_warning_lines"] == fault_context.params.workers
