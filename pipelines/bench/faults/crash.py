"""2. Crash under load: a 2-worker server answering concurrent /search and /feedback loses a worker to SIGKILL
every few seconds, then the whole server. Every line of events.jsonl must parse, every acknowledged /feedback
be in it, an event be written more than once only when its client retried a lost reply (and then count once
towards a reward), and the server start again on the same folders."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import httpx

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import Server
from pipelines.core.params import RewardParams
from pipelines.feedback.log import EVENTS
from pipelines.feedback.policies import slot_rewards


class FeedbackClient(threading.Thread):
    """Searches, then reports a click on the first item of each answer; a /feedback whose reply was lost is
    retried once with the same request id (the case a retry must not count twice)."""

    def __init__(self, url: str, headers: dict, queries: list[str], seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.headers, self.queries, self.stop = url, headers, queries, stop
        self.rng = random.Random(seed)
        self.acknowledged: list[tuple[str, str]] = []
        self.retried: set[tuple[str, str]] = set()
        self.requests = 0
        self.server_errors = 0

    def _post(self, http: httpx.Client, path: str, body: dict):
        self.requests += 1
        reply = http.post(self.url + path, json=body)
        if reply.status_code >= 500 and reply.status_code != 503:  # 503: not durable, so not acknowledged
            self.server_errors += 1
        return reply

    def run(self) -> None:
        with httpx.Client(timeout=10, headers=self.headers) as http:
            while not self.stop.is_set():
                try:
                    answer = self._post(http, "/search", {"query": self.rng.choice(self.queries), "k": 5})
                except httpx.HTTPError:
                    continue  # a killed worker's connection: try the next search
                if answer.status_code != 200 or not answer.json()["items"]:
                    continue
                event = (answer.json()["request_id"], answer.json()["items"][0]["item_id"])
                body = {"request_id": event[0], "user_id": "u-load", "item_id": event[1], "event_type": "click"}
                for _ in range(2):
                    try:
                        reply = self._post(http, "/feedback", body)
                    except httpx.HTTPError:
                        self.retried.add(event)  # no answer: it may or may not have been written
                        continue
                    if reply.status_code == 200:
                        self.acknowledged.append(event)
                    break


def _kill_workers(server: Server, seconds: float, every: float) -> int:
    kills = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(every)
        workers = server.workers()
        if workers:
            random.Random(kills).choice(workers).send_signal(signal.SIGKILL)
            kills += 1
    return kills


def _written_events(path) -> tuple[dict[tuple[str, str], int], int]:
    """(request id, item) -> times written, and the count of lines that did not parse."""
    written, torn = {}, 0
    for line in path.read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            torn += 1
            continue
        key = (row["request_id"], row["item_id"])
        written[key] = written.get(key, 0) + 1
    return written, torn


def run(context: FaultContext) -> Fault:
    params, state = context.params, context.folder("crash_under_load")
    server = Server(context.bundle, state, workers=max(2, params.workers)).wait_ready()
    stop = threading.Event()
    clients = [FeedbackClient(server.url, server.headers, context.queries(), seed, stop)
               for seed in range(params.clients)]
    try:
        for client in clients:
            client.start()
        kills = _kill_workers(server, params.load_seconds, params.kill_every_seconds)
        server.stop(signal.SIGKILL)  # then the whole server, mid-load
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=15)
        server.stop()

    acknowledged = [event for client in clients for event in client.acknowledged]
    retried = set().union(*(client.retried for client in clients))
    written, torn = _written_events(state / "feedback" / EVENTS)
    present = [event for event in acknowledged if event in written]
    fault = Fault(requests=sum(c.requests for c in clients), errors=sum(c.server_errors for c in clients),
                  acknowledged=len(acknowledged), present=len(present))
    fault.figures.update(workers_killed=kills, retried=len(retried), torn_lines=torn,
                         written_twice=sum(1 for count in written.values() if count > 1))
    fault.check("workers killed under load", kills >= 2 and len(acknowledged) > 50)
    fault.check("no 5xx", fault.errors == 0)
    fault.check("every line parses", torn == 0)
    fault.check("every acknowledged event present", len(present) == len(acknowledged))
    fault.check("written once unless retried", all(count == 1 for event, count in written.items() if event not in retried))
    weights = RewardParams(click=1.0, add_to_cart=2.0, purchase=5.0)
    fault.check("a retried event rewards once", all(
        slot_rewards(1, [(0, "click")] * written[event], weights).tolist() == [1.0] for event in retried & set(written)))
    fault.check("restarts on the same folders", _restarts(context, state, acknowledged))
    return fault


def _restarts(context: FaultContext, state, acknowledged) -> bool:
    with Server(context.bundle, state, workers=max(2, context.params.workers)) as again:
        reply = httpx.post(again.url + "/feedback", headers=again.headers, timeout=30,
                           json={"request_id": "after-crash", "user_id": "u-load",
                                 "item_id": acknowledged[0][1] if acknowledged else "none", "event_type": "click"})
    return reply.status_code == 200
