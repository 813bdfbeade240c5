"""Crash under load: a real 2-worker server answering concurrent /search and /feedback calls loses a worker to
SIGKILL every few seconds, then the whole server. Afterwards every line of events.jsonl parses, every /feedback
the clients saw acknowledged is in it, an event is written once unless its client retried it (and a retry
never counts twice towards a reward), and the server starts again on the same folders."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.core.params import RewardParams
from pipelines.feedback.log import EVENTS
from pipelines.feedback.policies import slot_rewards
from tests.server import KEYS, Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 16
RUN_SECONDS = 24
KILL_EVERY_SECONDS = 8


class Client(threading.Thread):
    """Searches, then reports a click on the first item of each answer; a /feedback whose reply was lost is
    retried once with the same request id (the case a retry must not count twice)."""

    def __init__(self, url: str, queries: list[str], seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.queries, self.stop = url, queries, stop
        self.rng = random.Random(seed)
        self.acknowledged: list[tuple[str, str]] = []
        self.retried: set[tuple[str, str]] = set()
        self.server_errors = 0
        self.headers = {"Authorization": f"Bearer {KEYS[seed % len(KEYS)]}"}

    def run(self) -> None:
        with httpx.Client(timeout=10, headers=self.headers) as http:
            while not self.stop.is_set():
                try:
                    answer = http.post(self.url + "/search", json={"query": self.rng.choice(self.queries), "k": 5})
                except httpx.HTTPError:
                    continue  # a killed worker's connection: try the next search
                if answer.status_code >= 500:
                    self.server_errors += 1
                if answer.status_code != 200 or not answer.json()["items"]:
                    continue
                event = (answer.json()["request_id"], answer.json()["items"][0]["item_id"])
                for attempt in range(2):
                    try:
                        reply = http.post(self.url + "/feedback", json={"request_id": event[0], "user_id": "u-load",
                                                                        "item_id": event[1], "event_type": "click"})
                    except httpx.HTTPError:
                        self.retried.add(event)  # no answer: it may or may not have been written
                        continue
                    if reply.status_code == 200:
                        self.acknowledged.append(event)
                    elif reply.status_code >= 500 and reply.status_code != 503:
                        self.server_errors += 1
                    break


def test_workers_killed_under_load_lose_no_acknowledged_feedback(tiny_bundle, tmp_path):
    queries = pd.read_parquet(Path(tiny_bundle["bundle"]) / "items.parquet")["title"].str.split().str[0].tolist()
    server = Server(tiny_bundle["bundle"], tmp_path, workers=2).wait_ready()
    stop, kills = threading.Event(), 0
    clients = [Client(server.url, queries, seed, stop) for seed in range(CLIENTS)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            time.sleep(KILL_EVERY_SECONDS)
            workers = server.workers()
            if workers:
                random.Random(kills).choice(workers).send_signal(signal.SIGKILL)
                kills += 1
        server.stop(signal.SIGKILL)  # then the whole server, mid-load
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=15)
        server.stop()

    acknowledged = [event for client in clients for event in client.acknowledged]
    retried = set().union(*(client.retried for client in clients))
    assert kills >= 2 and len(acknowledged) > 50, (kills, len(acknowledged))
    assert sum(client.server_errors for client in clients) == 0

    lines = (tmp_path / "feedback" / EVENTS).read_bytes().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses: a SIGKILL never tears one
    written: dict[tuple[str, str], int] = {}
    for row in rows:
        written[(row["request_id"], row["item_id"])] = written.get((row["request_id"], row["item_id"]), 0) + 1
    missing = [event for event in acknowledged if event not in written]
    assert not missing, f"{len(missing)} acknowledged events not in the log"
    assert all(count == 1 for event, count in written.items() if event not in retried)
    weights = RewardParams(click=1.0, add_to_cart=2.0, purchase=5.0)
    for event in retried & set(written):
        assert slot_rewards(1, [(0, "click")] * written[event], weights).tolist() == [1.0]

    again = Server(tiny_bundle["bundle"], tmp_path, workers=2).wait_ready()  # the same folders, after the crash
    try:
        reply = httpx.post(again.url + "/feedback", json={"request_id": "after-crash", "user_id": "u-load",
                                                          "item_id": acknowledged[0][1], "event_type": "click"},
                           headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=30)
        assert reply.status_code == 200
    finally:
        again.stop()
