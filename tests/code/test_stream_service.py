"""The service on the real-time stream, against a real redis-server and a real `shopfusion stream run`: an
event posted to /events changes the next /recommend of its user; a bad row refuses its batch naming the row
and field; no raw user id reaches Redis; with Redis gone the service answers from the bundle and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import httpx
import pandas as pd
import pytest

from pipelines.bench.served import RedisServer, Server, wait_until
from pipelines.core.config import PARAMS_ENV
from pipelines.serving.live import LIVE_UNAVAILABLE
from tests.conftest import REPO

pytestmark = pytest.mark.integration
SHOPPER = "fresh-shopper@example.com"


def processor(redis_url: str, log_path) -> subprocess.Popen:
    env = {**os.environ, PARAMS_ENV: str(REPO / "params.yaml")}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "run", "--redis-url", redis_url,
                             "--consumer", "test"], cwd=REPO, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def event(number: int, item_id: str, event_type: str = "purchase") -> dict:
    return {"event_id": f"live-{number}", "user_id": SHOPPER, "item_id": item_id, "event_type": event_type,
            "timestamp": datetime.now(timezone.utc).isoformat(), "session_id": "s-live"}


def recommend(server: Server) -> dict:
    reply = httpx.post(server.url + "/recommend", headers=server.headers, json={"user_id": SHOPPER, "k": 5}, timeout=30)
    assert reply.status_code == 200
    return reply.json()


def test_an_event_changes_the_next_answer_and_redis_loss_is_said(tiny_bundle, tmp_path):
    item = str(pd.read_parquet(tiny_bundle["bundle"] / "items.parquet")["item_id"].iloc[0])
    with RedisServer() as redis_server:
        worker = processor(redis_server.url, tmp_path / "processor.log")
        try:
            with Server(tiny_bundle["bundle"], tmp_path / "serving",
                        extra_env={"SHOPFUSION_REDIS_URL": redis_server.url}) as server:
                assert recommend(server)["fallback"] is not None  # nobody knows this shopper yet
                posted = httpx.post(server.url + "/events", headers=server.headers, json={"events": [event(1, item)]},
                                    timeout=30)
                assert posted.status_code == 200 and posted.json() == {"accepted": 1}
                started = time.monotonic()
                assert wait_until(lambda: recommend(server)["fallback"] is None, 5, 0.05), \
                    (tmp_path / "processor.log").read_text()[-2000:]
                fresh = recommend(server)
                assert time.monotonic() - started < 2.0 and item not in {i["item_id"] for i in fresh["items"]}

                bad = httpx.post(server.url + "/events", headers=server.headers, timeout=30,
                                 json={"events": [event(2, item), {**event(3, item), "event_type": "teleport"}]})
                assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["events", 1, "event_type"]
                assert "teleport" not in bad.text
                marker = httpx.post(server.url + "/events", headers=server.headers, timeout=30,
                                    json={"events": [{**event(5, item), "item_id": "null"}]})  # the contract's rule
                assert marker.status_code == 422 and marker.json()["detail"][0]["loc"] == ["events", 0, "item_id"]

                import redis

                client = redis.Redis.from_url(redis_server.url)
                assert client.xlen("shopfusion:events") == 1  # the refused batch published nothing
                dumped = b"".join(client.dump(key) or b"" for key in client.keys("*"))
                assert SHOPPER.encode() not in dumped and b"fresh-shopper" not in dumped

                redis_server.stop()
                gone = recommend(server)
                assert gone["fallback"] is not None and LIVE_UNAVAILABLE in gone["notes"]
                refused = httpx.post(server.url + "/events", headers=server.headers,
                                     json={"events": [event(4, item)]}, timeout=30)
                assert refused.status_code == 503 and refused.headers["retry-after"]
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
