"""The Redis cache tier under an outage, against a real redis-server started on a spare port (no mock).

Redis down at start: the worker starts on its local tier with one warning. Redis killed while serving:
requests keep answering at local speed (no retries, no stall), and the tier comes back by itself once
Redis does.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time

import pytest

from pipelines.serving.app import ShopFusionApp

pytestmark = pytest.mark.integration  # starts redis-server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (the local Redis of these machines ships it)")
    server = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.05)
    server.kill()
    pytest.fail(f"redis-server did not listen on port {port}")


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


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

        server = start_redis(port)
        assert wait_until(lambda: redis_tier.available, 4 * served.params.cache.redis_retry_seconds + 2)
        served.search("kitchen knife", k=5)
        assert redis_tier.client.dbsize() == 1  # the shared tier is written again

        server.kill()
        server.wait()
        started = time.perf_counter()
        answers = [served.search(f"hose {number}", k=5) for number in range(20)]
        elapsed = time.perf_counter() - started
        assert all(answer["items"] for answer in answers) and not redis_tier.available
        # the first failure costs at most one timeout; the rest skip Redis (redis-py's defaults: seconds each)
        assert elapsed < 20 * 0.5, elapsed
        assert redis_tier.skipped >= 19
    finally:
        served.close()
        if server is not None and server.poll() is None:
            server.kill()
