"""The Redis cache tier under an outage, against a real redis-server started on a spare port (no mock).

Redis down at start: the worker starts on its local tier with one warning. Redis killed while serving:
requests keep answering at local speed (no retries, no stall), and the tier comes back by itself once
Redis does.
"""

from __future__ import annotations

import logging
import time

import pytest

from pipelines.bench.served import RedisServer, free_port, wait_until
from pipelines.serving.app import ShopFusionApp

pytestmark = pytest.mark.integration  # starts redis-server


def test_redis_down_at_start_then_back_then_killed(tiny_bundle, tmp_path, caplog):
    port = free_port()
    caplog.set_level(logging.INFO, logger="pipelines")
    served = ShopFusionApp(tiny_bundle["bundle"], tmp_path / "state", tmp_path / "feedback",
                           redis_url=f"redis://127.0.0.1:{port}/0")
    server = None
    try:
        redis_tier = served.cache.shared
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "redis" in r.getMessage()]
        assert len(warnings) == 1 and "unreachable at start" in warnings[0].getMessage()
        assert served.search("garden hose", k=5)["items"] and not redis_tier.available

        server = RedisServer(port)
        assert wait_until(lambda: redis_tier.available, 4 * served.params.cache.redis_retry_seconds + 2)
        served.search("kitchen knife", k=5)
        assert redis_tier.client.dbsize() == 1  # the shared tier is written again

        server.stop()
        started = time.perf_counter()
        answers = [served.search(f"hose {number}", k=5) for number in range(20)]
        elapsed = time.perf_counter() - started
        assert all(answer["items"] for answer in answers) and not redis_tier.available
        # the first failure costs at most one timeout; the rest skip Redis (redis-py's defaults: seconds each)
        assert elapsed < 20 * 0.5, elapsed
        assert redis_tier.skipped >= 19
    finally:
        served.close()
        if server is not None:
            server.stop()
