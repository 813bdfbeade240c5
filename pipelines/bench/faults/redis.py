"""3. Redis under faults. Every search is a new query, so each one reaches the shared cache tier (a hit in a
worker's own LRU would hide Redis). Baseline: the server without Redis (its host's SQLite tier, started on a
corrupted cache.sqlite, which must be rebuilt). Then a server in front of a real redis-server: healthy, paused
(SIGSTOP: connections hang), dropped (SIGKILL). /search p95 while paused or dropped must stay within
latency_factor x the baseline with no error. Last, Redis down at start: one warning line per worker, no
traceback, and the service answers from its local tiers."""

from __future__ import annotations

import itertools
import time

import httpx

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import RedisServer, SearchLoad, Server, free_port, p95, wait_until
from pipelines.serving.cache import SHARED_FILE

CORRUPT = b"this is not a SQLite database\n" * 64


class FreshQueries:
    """An endless supply of queries never sent before (catalog words with a counter)."""

    def __init__(self, words: list[str]):
        self._counter = itertools.count()
        self.words = words

    def __getitem__(self, index: int) -> str:
        number = next(self._counter)
        return f"{self.words[number % len(self.words)]} {number}"

    def __len__(self) -> int:
        return 1 << 30


def _phase(load: SearchLoad, seconds: float) -> list[float]:
    mark = load.mark()
    time.sleep(seconds)
    return load.since(mark)


def _baseline(context: FaultContext, fault: Fault, queries) -> float | None:
    state = context.folder("redis_baseline")
    (state / "serving").mkdir()
    (state / "serving" / SHARED_FILE).write_bytes(CORRUPT)
    with Server(context.bundle, state, workers=context.params.workers) as server:
        with SearchLoad(server.url, server.headers, queries, context.params.clients) as load:
            latencies = _phase(load, context.params.load_seconds)
        output = server.output()
    fault.requests += load.requests
    fault.errors += load.errors
    fault.check("a corrupted cache.sqlite is moved aside and rebuilt",
                "moved aside and rebuilt" in output and (state / "serving" / f"{SHARED_FILE}.corrupt").exists())
    return p95(latencies)


def _outages(context: FaultContext, fault: Fault, queries) -> dict[str, float | None]:
    seconds = context.params.load_seconds
    with RedisServer() as redis_server:
        env = {"SHOPFUSION_REDIS_URL": redis_server.url}
        with Server(context.bundle, context.folder("redis_outage"), workers=context.params.workers,
                    extra_env=env) as server:
            with SearchLoad(server.url, server.headers, queries, context.params.clients) as load:
                healthy = _phase(load, seconds / 2)
                redis_server.pause()
                paused = _phase(load, seconds)
                redis_server.resume()
                _phase(load, 3)  # the background probe finds it back
                redis_server.stop()
                dropped = _phase(load, seconds)
            output = server.output()
    fault.requests += load.requests
    fault.errors += load.errors
    fault.check("no traceback during the outages", "Traceback" not in output)
    return {"healthy": p95(healthy), "paused": p95(paused), "dropped": p95(dropped),
            "paused_requests": len(paused), "dropped_requests": len(dropped)}


def _down_at_start(context: FaultContext, fault: Fault) -> None:
    env = {"SHOPFUSION_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    with Server(context.bundle, context.folder("redis_down"), workers=context.params.workers, extra_env=env) as server:
        reply = httpx.post(server.url + "/search", headers=server.headers, json={"query": "garden", "k": 5}, timeout=30)
        # the server is ready with its first worker: give the others time to start (and to say it) too
        wait_until(lambda: server.output().count("redis unreachable at start") >= context.params.workers, 20, 0.2)
        output = server.output()
    fault.requests += 1
    fault.errors += reply.status_code >= 500
    warnings = [line for line in output.splitlines() if "redis unreachable at start" in line]
    fault.figures["down_at_start_warning_lines"] = len(warnings)
    fault.check("Redis down at start: one warning line per worker", len(warnings) == context.params.workers)
    fault.check("Redis down at start: no traceback", "Traceback" not in output)
    fault.check("Redis down at start: answers from the local tiers", reply.status_code == 200)


def run(context: FaultContext) -> Fault:
    fault = Fault()
    queries = FreshQueries(context.queries())
    fault.baseline_p95_ms = _baseline(context, fault, queries)
    outage = _outages(context, fault, queries)
    _down_at_start(context, fault)
    fault.p95_ms = max(outage["paused"] or 0.0, outage["dropped"] or 0.0)
    fault.figures.update({f"p95_ms_{name}": value for name, value in outage.items()})
    fault.check("no errors", fault.errors == 0)
    fault.check("searches answered while Redis was paused and dropped",
                outage["paused_requests"] > 0 and outage["dropped_requests"] > 0)
    fault.check(f"p95 within {context.params.latency_factor}x the no-Redis baseline",
                fault.baseline_p95_ms is not None and fault.p95_ms <= context.params.latency_factor * fault.baseline_p95_ms)
    return fault
