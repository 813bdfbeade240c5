"""The service on the real-time stream, against a real redis-server and a real `shopfusion stream run`: an
event posted to /events changes the next /recommend of its user; a bad row refuses its batch naming the row
and field; no raw user id reaches Redis; a product posted to /items is found by every worker and leaves the
answers when out of stock; with Redis gone the service answers from the bundle and says so, and with Redis
back (empty) intake, the processor and the reads recover on their own."""

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

                product = {"item_id": "live-new-1", "title": "Zorblax quantum stapler", "price": 3.5, "stock": 2}
                added = httpx.post(server.url + "/items", headers=server.headers, json={"items": [product]}, timeout=30)
                assert added.status_code == 200 and added.json()["accepted"] == 1

                def found(query: str = "zorblax quantum stapler") -> bool:
                    # in the top 5: exploration moves an item at most feedback.exploration.max_shift = 3 slots
                    reply = httpx.post(server.url + "/search", headers=server.headers, timeout=30,
                                       json={"query": query, "k": 5})
                    return "live-new-1" in [item["item_id"] for item in reply.json()["items"]]

                assert wait_until(found, 5, 0.05)
                assert all(found() for _ in range(6))  # every worker follows the catalog stream
                untitled = httpx.post(server.url + "/items", headers=server.headers, timeout=30,
                                      json={"items": [{"item_id": "live-new-2", "price": 1.0}]})
                # valid in shape, refused by the catalog's state: 409 naming the row and field
                assert untitled.status_code == 409 and untitled.json()["detail"][0]["loc"] == ["items", 0, "title"]
                negative = httpx.post(server.url + "/items", headers=server.headers, timeout=30,
                                      json={"items": [{**product, "price": -1}]})
                assert negative.status_code == 422 and negative.json()["detail"][0]["loc"][-1] == "price"
                gone_out = httpx.post(server.url + "/items", headers=server.headers, timeout=30,
                                      json={"items": [{"item_id": "live-new-1", "stock": 0}]})
                assert gone_out.status_code == 200
                assert wait_until(lambda: not found(), 5, 0.05) and not any(found() for _ in range(6))

                redis_server.stop()
                gone = recommend(server)
                assert gone["fallback"] is not None and LIVE_UNAVAILABLE in gone["notes"]
                refused = httpx.post(server.url + "/events", headers=server.headers,
                                     json={"events": [event(4, item)]}, timeout=30)
                assert refused.status_code == 503 and refused.headers["retry-after"]

                # Redis back (empty, on the same port): intake, the processor and the reads recover on their own
                with RedisServer(port=redis_server.port):
                    def accepted() -> bool:
                        return httpx.post(server.url + "/events", headers=server.headers, timeout=30,
                                          json={"events": [event(6, item)]}).status_code == 200

                    assert wait_until(accepted, 15, 0.2)
                    assert wait_until(lambda: recommend(server)["fallback"] is None, 15, 0.1), \
                        (tmp_path / "processor.log").read_text()[-2000:]
                    assert LIVE_UNAVAILABLE not in recommend(server)["notes"]
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
