"""The kill replay: the same events twice, each time into a fresh redis-server through `shopfusion stream publish`
(check, pseudonymize, XADD: the command a shop's own systems use) and applied by `processors` real
`shopfusion stream run` processes with a Parquet sink. The first replay runs undisturbed; in the second a
processor is SIGKILLed every `kill_every_seconds` (in turn) and started again under its consumer name, for as long
as events remain to be applied. Then every processor is stopped (SIGTERM: it drains its sink) and the two states
are read back and compared (live.compare): events lost, events applied twice, counters, histories,
co-occurrences; the sink's files are checked for event ids written twice and accepted events missing.

Co-occurrences depend on the order in which one user's events are applied (an event pairs with the user's
earlier items already in the live history), so with several processors they may differ between two replays
without any event lost or doubled; they are reported, not counted as loss.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import redis

from pipelines.bench.served import RedisServer, wait_until
from pipelines.bench.stream.live import (
    Processors,
    children_cpu_seconds,
    compare,
    cpu_seconds,
    drained,
    sink_counts,
    snapshot,
    wait_drained,
)
from pipelines.bench.stream.replay import stamped
from pipelines.bench.workspace import shopfusion_command
from pipelines.core.config import Settings
from pipelines.core.privacy import existing_key, pseudonym
from pipelines.feedback.live_state import LiveState
from pipelines.feedback.stream import StreamNames


def _publish_command(path: Path, redis_url: str, params_path: Path, rate: float | None) -> list[str]:
    command = shopfusion_command("shopfusion stream publish") + [
        "--path", str(path), "--redis-url", redis_url, "--params", str(params_path)]
    return command + (["--rate", str(rate)] if rate else [])


def one_replay(name: str, events_file: Path, event_ids: list[str], users: list[str], items: list[str],
               settings: Settings, params_path: Path, folder: Path, params, kill: bool) -> dict:
    """One replay into a fresh redis-server; the state it left (live.snapshot), the sink's counts and its figures."""
    folder.mkdir(parents=True, exist_ok=True)
    sink = folder / "sink"
    with RedisServer() as redis_server:
        client = redis.Redis.from_url(redis_server.url)
        names = StreamNames.from_prefix(settings.stream.prefix)
        state = LiveState.from_params(client, names.state_prefix, settings.stream,
                                      settings.clean.session_gap_minutes * 60)
        processors = Processors(params.processors, name, redis_server.url, params_path, folder / "processors", sink)
        processors.start()
        try:
            processors.wait_joined(client, names, params.ready_timeout_s)
            started = time.monotonic()
            pids = {"processors": [process.pid for process in processors.processes],
                    "redis": [redis_server.process.pid]}
            cpu = {name: -cpu_seconds(group) for name, group in pids.items()}
            cpu["publisher"] = -children_cpu_seconds()  # the publish command: the one child that ends meanwhile
            with open(folder / "publish.out", "wb") as out, open(folder / "publish.err", "wb") as err:
                publisher = subprocess.Popen(_publish_command(events_file, redis_server.url, params_path,
                                                              params.kill_publish_rate),
                                             cwd=params_path.parent, stdout=out, stderr=err)
            if kill:
                _kill_while_working(processors, publisher, client, names, params)
            publisher.wait(timeout=params.replay_timeout_s)
            finished = wait_drained(client, names, params.drain_timeout_s)
            seconds = time.monotonic() - started
            for name, group in pids.items():
                cpu[name] += cpu_seconds(group)
            cpu["publisher"] += children_cpu_seconds()
        finally:
            counts = processors.stop()
        final_drain = _final_sink_drain(client, state, processors, params) if finished else None
        published = json.loads((folder / "publish.out").read_text(encoding="utf-8") or "{}").get("published", 0)
        # CPU time: exact for the clean replay; with kills, what the processors alive at the end used (and the
        # killed ones' count as the publisher's)
        cpu = {name: round(value, 1) for name, value in cpu.items()} if not kill else None
        return {"published": published, "drained": finished, "seconds": round(seconds, 2), "kills": processors.kills,
                "cpu_seconds": cpu,
                "processor_counts": counts, "state": snapshot(client, state, event_ids, users, items),
                "sink": {**sink_counts(sink, event_ids), "final_drain": final_drain,
                         "still_queued": _queued(client, state)}}


def _kill_while_working(processors: Processors, publisher: subprocess.Popen, client, names: StreamNames,
                        params) -> None:
    """SIGKILL one processor (in turn) every kill_every_seconds while events remain to be published or applied."""
    turn, deadline = 0, time.monotonic() + params.replay_timeout_s
    next_kill = time.monotonic() + params.kill_every_seconds
    while time.monotonic() < deadline:
        time.sleep(max(0.0, next_kill - time.monotonic()))
        if publisher.poll() is not None and drained(client, names):
            return
        processors.kill(turn % len(processors.names))
        turn += 1
        next_kill += params.kill_every_seconds


def _queued(client, state: LiveState) -> int | None:
    """Applied events still in the sink's queue (not yet in a file); None when this LiveState has no sink queue."""
    key = getattr(state, "sink_queue_key", None)
    return int(client.llen(key())) if key else None


def _final_sink_drain(client, state: LiveState, processors: Processors, params) -> dict | None:
    """A processor killed while it held the sink's lock keeps every other drain out until the lock's TTL ends;
    stopping the processors within that time leaves applied events queued in Redis (not lost: the next drain
    writes them). When that happened, wait for the lock to expire and start and stop one processor again, as the
    next deployment would: its drain at stop writes them. What it took is reported."""
    queued = _queued(client, state)
    if not queued:
        return None
    lock = f"{state.sink_queue_key()}:lock"
    started = time.monotonic()
    lock_ttl = client.ttl(lock)
    wait_until(lambda: not client.exists(lock), params.drain_timeout_s, 0.2)
    processors.start()  # each drains when stream.sink_flush_seconds have passed since it started
    wait_until(lambda: not _queued(client, state), params.drain_timeout_s, 0.2)
    processors.stop()
    return {"queued": queued, "lock_ttl_s": lock_ttl, "seconds": round(time.monotonic() - started, 1)}


def kill_replay(events: list[dict], settings: Settings, params_path: Path, folder: Path, params) -> dict:
    """The clean and the killed replay of `events` (canonical, raw user ids) and their comparison."""
    folder.mkdir(parents=True, exist_ok=True)
    events = stamped(events, datetime.now(timezone.utc))  # one set of timestamps for both replays
    events_file = folder / "events.parquet"
    pd.DataFrame(events).to_parquet(events_file, index=False)
    workspace = params_path.parent
    key = existing_key(settings.privacy.key_env, str(workspace / settings.privacy.key_file))
    if key is None:
        raise RuntimeError(f"{workspace}: no pseudonym key (the clean stage makes one)")
    event_ids = [event["event_id"] for event in events]
    users = sorted({pseudonym(event["user_id"], key) for event in events})
    items = sorted({event["item_id"] for event in events})
    clean = one_replay("clean", events_file, event_ids, users, items, settings, params_path, folder / "clean", params,
                       kill=False)
    killed = one_replay("killed", events_file, event_ids, users, items, settings, params_path, folder / "killed",
                        params, kill=True)
    comparison = compare(clean["state"], killed["state"])
    return {
        "events": len(events),
        "lost": comparison["lost"],
        "applied_twice": comparison["applied_twice"],
        "sink_duplicates": killed["sink"]["duplicates"],
        "sink_missing": killed["sink"]["missing"],
        "kills": killed["kills"],
        "processors": params.processors,
        "kill_every_seconds": params.kill_every_seconds,
        "comparison": {key: value for key, value in comparison.items() if key not in ("lost", "applied_twice")},
        **{name: {"published": run["published"], "applied": run["state"]["applied"], "drained": run["drained"],
                  "seconds": run["seconds"], "events_per_second": round(run["state"]["applied"] / run["seconds"], 1),
                  "cpu_seconds": run["cpu_seconds"], "sink": run["sink"],
                  "processor_counts": run["processor_counts"]}
           for name, run in (("clean", clean), ("killed", killed))},
    }
