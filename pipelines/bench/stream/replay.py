"""The replay while serving: events through POST /events, freshness probes, /recommend under load, and the served
lists of the test users judged afterwards.

- Publishers: `publishers` HTTP clients in a process of their own (spawned, so their JSON work does not share the
  bench's interpreter lock with the load's clients and distort its latencies), POSTing the replay's events in
  order, `batch` a call, each event stamped with the moment its batch is sent (the data's own years-old times
  would fall outside every live counter window and skip that work; the order is the data's). A 429 or 503 is
  retried after its Retry-After.
- Probes: one event every `probe_every_ms` through POST /events from the bench, up to PROBE_SENDERS in flight (one
  waiting for its answer does not delay the next); its freshness is the time from the moment it was due (just
  before its POST) until its applied marker (LiveState.seen_key) exists, polled every `poll_ms` (a probe refused
  with 429 / 503 is sent again after the Retry-After, and that wait is part of its freshness).
- Events/s: the replay's events and the probes, from the first POST to the poll that finds LiveState's applied
  counter at their total.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np

from pipelines.bench.served import RecommendLoad
from pipelines.bench.stream.live import cpu_seconds, own_cpu_seconds
from pipelines.core.metrics import ranking_report
from pipelines.feedback.live_state import LiveState

RETRY_STATUSES = (0, 429, 502, 503, 504)
MAX_RETRIES = 50
PROBE_SENDERS = 8  # probes in flight at once at most
POLL_WINDOW = 16  # outstanding probes (the oldest) whose applied markers each poll reads


def stamped(events: list[dict], at: datetime | None = None) -> list[dict]:
    """Copies of the events with ISO-8601 UTC timestamps from `at` (default: now), a microsecond apart, in order."""
    base = at or datetime.now(timezone.utc)
    return [{**event, "timestamp": (base + timedelta(microseconds=index)).isoformat()}
            for index, event in enumerate(events)]


def _retry_after(reply: httpx.Response | None) -> float:
    try:
        return min(2.0, float(reply.headers.get("retry-after", 0.05))) if reply is not None else 0.05
    except ValueError:
        return 0.05


def post_events(http: httpx.Client, url: str, events: list[dict], totals: dict, lock: threading.Lock) -> int:
    """POST one batch, retried while the service says "later" (429, 503) or does not answer; the accepted count."""
    for _ in range(MAX_RETRIES):
        reply = None
        try:
            reply = http.post(url + "/events", json={"events": events})
            status = reply.status_code
        except httpx.HTTPError:
            status = 0
        with lock:
            totals["statuses"][status] = totals["statuses"].get(status, 0) + 1
        if status == 200:
            return int(reply.json()["accepted"])
        if status not in RETRY_STATUSES:
            break
        with lock:
            totals["retries"] += 1
        time.sleep(_retry_after(reply))
    with lock:
        totals["refused"] += len(events)
    return 0


def _publisher_main(url: str, headers: dict, events: list[dict], batch: int, publishers: int, go, results) -> None:
    """The publishing process: waits for `go`, sends every batch once (in order, `publishers` at a time), then puts
    its figures on `results`: first and last moment (time.monotonic, one clock for every process of the host)."""
    batches = [events[start:start + batch] for start in range(0, len(events), batch)]
    totals = {"accepted": 0, "retries": 0, "refused": 0, "statuses": {}}
    lock, cursor = threading.Lock(), iter(range(len(batches)))

    def client() -> None:
        with httpx.Client(timeout=30, headers=headers) as http:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                accepted = post_events(http, url, stamped(batches[index]), totals, lock)
                with lock:
                    totals["accepted"] += accepted

    results.put("ready")
    go.wait()
    first, cpu = time.monotonic(), own_cpu_seconds()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put({**totals, "first": first, "end": time.monotonic(), "cpu_s": own_cpu_seconds() - cpu})


class Publisher:
    """The publishing process, started and ready (imported, batches cut) before `go` is given."""

    def __init__(self, url: str, headers: dict, events: list[dict], batch: int, publishers: int):
        context = multiprocessing.get_context("spawn")
        self.go, self.results = context.Event(), context.Queue()
        self.process = context.Process(target=_publisher_main, args=(url, headers, events, batch, publishers,
                                                                     self.go, self.results), daemon=True)
        self.process.start()
        if self.results.get(timeout=300) != "ready":
            raise RuntimeError("the publishing process did not start")

    def start(self) -> None:
        self.go.set()

    def result(self, timeout: float) -> dict:
        figures = self.results.get(timeout=timeout)
        self.process.join(timeout=30)
        return figures


class Probes:
    """Probe events sent through POST /events every `every_ms`, and a poller that notes when each is applied and
    when LiveState's applied counter reaches a target."""

    def __init__(self, url: str, headers: dict, client, state: LiveState, items: list[str], every_ms: float,
                 poll_ms: float, seed: int = 0):
        self.url, self.headers, self.client, self.state = url, headers, client, state
        self.items, self.every, self.poll = items, every_ms / 1000, poll_ms / 1000
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.outstanding: dict[str, float] = {}  # probe event id -> when its POST started
        self.freshness: list[float] = []
        self.sent = self.failed = 0
        self.applied = 0
        self.target: int | None = None
        self.reached_at: float | None = None
        self.sending, self.polling = threading.Event(), threading.Event()
        self.totals, self.totals_lock = {"accepted": 0, "retries": 0, "refused": 0, "statuses": {}}, threading.Lock()
        self.threads = [threading.Thread(target=self._send, daemon=True), threading.Thread(target=self._poll, daemon=True)]

    def start(self) -> "Probes":
        self.sending.set()
        self.polling.set()
        for thread in self.threads:
            thread.start()
        return self

    def _send(self) -> None:
        """A probe every `every` seconds, each POSTed by one of PROBE_SENDERS threads: a probe waiting for its answer
        (queued behind /recommend calls in a busy worker) does not hold the next one back, so the probes sample the
        whole replay at their rate."""
        local, clients = threading.local(), []

        def post(event: dict) -> None:
            if not hasattr(local, "http"):
                local.http = httpx.Client(timeout=30, headers=self.headers)
                clients.append(local.http)
            if not post_events(local.http, self.url, stamped([event]), self.totals, self.totals_lock):
                with self.lock:
                    self.outstanding.pop(event["event_id"], None)
                    self.failed += 1

        with ThreadPoolExecutor(PROBE_SENDERS) as senders:
            next_at = time.monotonic()
            while self.sending.is_set():
                number = self.sent
                event = {"event_id": f"probe-{number}", "user_id": f"probe-shopper-{number % 50}",
                         "item_id": self.random.choice(self.items), "event_type": "view", "session_id": None}
                with self.lock:
                    self.outstanding[event["event_id"]] = time.monotonic()
                    self.sent += 1
                senders.submit(post, event)
                next_at += self.every
                time.sleep(max(0.0, next_at - time.monotonic()))
        for http in clients:
            http.close()

    def _poll(self) -> None:
        """Every `poll` seconds: the applied markers of the POLL_WINDOW oldest outstanding probes (the stream applies
        them about in order; polling every outstanding one, every round, flooded Redis once probes queued up and
        slowed the processors it measures) and the applied counter."""
        while self.polling.is_set():
            with self.lock:
                waiting = list(itertools.islice(self.outstanding.items(), POLL_WINDOW))
            pipe = self.client.pipeline(transaction=False)
            for event_id, _ in waiting:
                pipe.exists(self.state.seen_key(event_id))
            pipe.get(self.state.applied_key())
            *marked, applied = pipe.execute()
            now = time.monotonic()
            with self.lock:
                for (event_id, sent_at), seen in zip(waiting, marked):
                    if seen and self.outstanding.pop(event_id, None) is not None:
                        self.freshness.append(now - sent_at)
                self.applied = int(applied or 0)
                if self.target is not None and self.reached_at is None and self.applied >= self.target:
                    self.reached_at = now
            time.sleep(self.poll)

    def stop_sending(self) -> int:
        """No more probes; how many were sent (each counts in the applied counter once applied)."""
        self.sending.clear()
        self.threads[0].join(timeout=35)
        return self.sent - self.failed

    def wait_applied(self, target: int, seconds: float) -> float | None:
        """Until the applied counter reaches `target` (the poller's moment of seeing it), or None after `seconds`."""
        with self.lock:
            self.target = target
            if self.applied >= target and self.reached_at is None:
                self.reached_at = time.monotonic()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if self.reached_at is not None:
                    return self.reached_at
            time.sleep(0.01)
        return None

    def stop(self, settle_seconds: float = 5.0) -> None:
        """Give the last probes `settle_seconds` to be applied, then stop polling."""
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline:
            with self.lock:
                if not self.outstanding:
                    break
            time.sleep(0.01)
        self.polling.clear()
        self.threads[1].join(timeout=5)

    def figures(self) -> dict:
        values = np.asarray(self.freshness)
        quantiles = {name: round(float(np.percentile(values, q)), 4) if len(values) else None
                     for name, q in (("p50", 50), ("p95", 95), ("p99", 99))}
        with self.totals_lock:  # a probe answered 429 / 503 waited for its Retry-After: it counts in its freshness
            statuses = {str(code): count for code, count in sorted(self.totals["statuses"].items())}
        return {**quantiles, "max": round(float(values.max()), 4) if len(values) else None,
                "probes": len(values), "unapplied": len(self.outstanding), "failed": self.failed,
                "post_statuses": statuses}


def replay_while_serving(url: str, headers: dict, client, state: LiveState, events: list[dict], load_users: list[str],
                         probe_items: list[str], params, processes: dict[str, list[int]]) -> dict:
    """Publish `events` through POST /events with /recommend at concurrency `params.clients` and probes running;
    the figures of the replay (see the module's docstring), with the CPU time each part used over it: `processes`
    (name -> pids: the server, the processors, redis), the publishing process and this one (load, probes)."""
    publisher = Publisher(url, headers, events, params.batch, params.publishers)
    probes = Probes(url, headers, client, state, probe_items, params.probe_every_ms, params.poll_ms, params.seed)
    with RecommendLoad(url, headers, load_users, params.clients) as load:
        time.sleep(params.warmup_seconds)  # the load in its steady state before the first event
        mark, requests_before = load.mark(), load.requests
        cpu_before = {name: cpu_seconds(pids) for name, pids in processes.items()}
        cpu_before["bench (load, probes)"] = own_cpu_seconds()
        probes.start()
        publisher.start()
        published = publisher.result(timeout=params.replay_timeout_s)
        probes_sent = probes.stop_sending()
        target = len(events) + probes_sent
        done_at = probes.wait_applied(target, params.replay_timeout_s)
        cpu = {name: cpu_seconds(pids) - cpu_before[name] for name, pids in processes.items()}
        cpu["bench (load, probes)"] = own_cpu_seconds() - cpu_before["bench (load, probes)"]
        cpu["publisher"] = published["cpu_s"]
        latencies = load.since(mark)
        load_requests = load.requests - requests_before
        with load.lock:
            load_statuses = {str(code): count for code, count in sorted(load.statuses.items())}
            load_errors = load.errors
    probes.stop()
    applied = probes.applied
    seconds = (done_at or time.monotonic()) - published["first"]
    intake_seconds = published["end"] - published["first"]
    return {
        "events": len(events), "probes_sent": probes_sent, "applied": applied, "all_applied": done_at is not None,
        "seconds": round(seconds, 3),
        "events_per_second": round(applied / seconds, 1),  # applied by the end (all of them when all_applied)
        "intake": {"accepted": published["accepted"], "seconds": round(intake_seconds, 3),
                   "events_per_second": round(published["accepted"] / intake_seconds, 1) if intake_seconds else None,
                   "retries": published["retries"], "refused": published["refused"],
                   "statuses": {str(k): v for k, v in sorted(published["statuses"].items())}},
        "freshness_s": probes.figures(),
        "cpu_seconds": {name: round(value, 1) for name, value in cpu.items()},
        "cpu_capacity_s": round(seconds * len(os.sched_getaffinity(0)), 1),  # wall time x the CPUs it may use
        "recommend": {"requests": load_requests, "answered": len(latencies), "errors": load_errors,
                      "statuses_incl_warmup": load_statuses, **_latency(latencies)},
    }


def _latency(latencies_ms: list[float]) -> dict:
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {f"p{q}_ms": round(float(np.percentile(latencies_ms, q)), 1) for q in (50, 95, 99)}


def served_lists(url: str, headers: dict, users: list[str], clients: int, k: int = 10) -> dict:
    """/recommend k for each user (raw id) at concurrency `clients`: each user's item ids, the users whose answer's
    notes say the live state was unavailable (answered from the bundle alone), how many got no answer, and the
    latencies."""
    from pipelines.serving.live import LIVE_UNAVAILABLE

    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []

    def ask(user: str) -> tuple[list[str] | None, bool]:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=30, headers=headers)
        for _ in range(MAX_RETRIES):
            started = time.perf_counter()
            try:
                reply = local.http.post(url + "/recommend", json={"user_id": user, "k": k})
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if reply.status_code == 200:
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
                answer = reply.json()
                return [item["item_id"] for item in answer["items"]], LIVE_UNAVAILABLE in answer.get("notes", [])
            if reply.status_code not in RETRY_STATUSES:
                break
            time.sleep(_retry_after(reply))
        return None, False

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(ask, users))
    return {"lists": {user: items for user, (items, _) in zip(users, answers) if items is not None},
            "live_unavailable": [user for user, (_, unavailable) in zip(users, answers) if unavailable],
            "unanswered": sum(items is None for items, _ in answers), **_latency(latencies)}


def live_lists(url: str, headers: dict, users: list[str], clients: int, retry_seconds: float, rounds: int = 3) -> dict:
    """served_lists from a server with the live state, where an answer the service gave without it (its Redis read
    timed out under load: the circuit then skips Redis for `retry_seconds`) is asked again, one at a time, after
    the circuit's retry, so the live figures are of answers that read the live state. How often that happened is
    reported, and the first pass is kept (`first_lists`): the lists as served."""
    answers = served_lists(url, headers, users, clients)
    first_lists, again = dict(answers["lists"]), answers["live_unavailable"]
    lists = {user: items for user, items in first_lists.items() if user not in set(again)}
    for _ in range(rounds):
        if not again:
            break
        time.sleep(retry_seconds + 0.5)
        retried = served_lists(url, headers, again, 1)
        unavailable = set(retried["live_unavailable"])
        lists.update({user: items for user, items in retried["lists"].items() if user not in unavailable})
        again = sorted(unavailable)
    return {**answers, "lists": lists, "first_lists": first_lists, "live_unavailable": len(answers["live_unavailable"]),
            "still_unavailable": len(again)}


def judged(lists: dict[str, list[str]], positives: dict[str, str], k: int = 10) -> dict:
    """HR@k and NDCG@k (pipelines/core/metrics.py) of each user's test positive in their served list; a user
    without an answer counts as a miss."""
    users = sorted(positives)
    report = ranking_report([lists.get(user, []) for user in users], [{positives[user]: 1.0} for user in users],
                            ks=(k,))
    return {f"hr@{k}": round(report[f"hr@{k}"], 5), f"ndcg@{k}": round(report[f"ndcg@{k}"], 5), "users": len(users)}
