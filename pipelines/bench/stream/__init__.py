"""`shopfusion bench stream` (issue #18, point 7): the live stream measured on a real dataset while serving.

1. Bundle: the dvc.yaml stages (pipelines/bench/workspace.py) on a train-only copy of a folder in the amazon-office
   layout (data.train_only_folder: the dev and test interactions are in no file the stages read), assembled as
   `package` assembles it. Its histories end with each user's last train interaction.
2. Replay while serving (replay.py): a real `bentoml serve` of the bundle with a private redis-server, `processors`
   real `shopfusion stream run` processes; the dev interactions in time order (with background shoppers repeating
   them, data.replay_events) through POST /events while /recommend runs at concurrency `clients` and probe events
   measure freshness. Figures: events/s from the first POST to the last event applied, freshness p50/p95/p99,
   /recommend p95 during the replay.
3. Live versus frozen: each test user's /recommend top 10 (the served model over the whole catalog, the user's
   history left out) from the server with the live state, then from a server of the same bundle without Redis
   (the frozen bundle alone); HR@10 and NDCG@10 of the test positives (pipelines/core/metrics.py).
4. Kill replay (kill.py): a clean replay and one with processors SIGKILLed every few seconds, compared.

Everything runs on `cores` CPUs (the bench pins itself and what it starts; 0: no pinning). The JSON holds
events_per_second, freshness_s, recommend_p95_ms, live, frozen, kill_replay and seconds, the figures behind them,
and `targets` (each target of the issue and whether it holds); a table is printed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

PROTOCOL = ("bundle from the train interactions only (dvc.yaml stages, leave_one_out on train); the dev "
            "interactions replayed in time order through POST /events with background shoppers repeating them, "
            "/recommend under load; test positives judged in each user's served top 10 over the catalog, live "
            "state versus the frozen bundle; a replay with processors SIGKILLed compared with a clean one")

# The targets, each checked on the finished document
TARGETS = {
    "events_per_second >= 10000": lambda d: d["events_per_second"] >= 10_000,
    "recommend_p95_ms <= 40": lambda d: d["recommend_p95_ms"] is not None and d["recommend_p95_ms"] <= 40,
    "freshness p99 <= 1 s": lambda d: d["freshness_s"]["p99"] is not None and d["freshness_s"]["p99"] <= 1.0,
    "live beats frozen (HR@10 and NDCG@10)": lambda d: d["live"]["hr@10"] > d["frozen"]["hr@10"]
    and d["live"]["ndcg@10"] > d["frozen"]["ndcg@10"],
    "kill replay: 0 lost, 0 applied twice": lambda d: d["kill_replay"]["lost"] == 0
    and d["kill_replay"]["applied_twice"] == 0,
    "kill replay: the sink holds each accepted event once": lambda d: d["kill_replay"]["sink_duplicates"] == 0
    and d["kill_replay"]["sink_missing"] == 0,
}


class StreamBenchParams(BaseModel):
    """benchmarks/params.yaml `stream` (the test passes smaller values)."""

    model_config = ConfigDict(extra="forbid")
    work_dir: str = ".shopfusion/bench/stream_{dataset}"  # {dataset}: the folder's *.item2index stem
    pipeline: dict = {}               # params.yaml overrides of the stages (dotted keys)
    cores: int = Field(2, ge=0)       # CPUs the bench and everything it starts run on (0: all)
    workers: int = Field(2, ge=1)     # the server's workers
    processors: int = Field(2, ge=1)  # `shopfusion stream run` processes
    publishers: int = Field(2, ge=1)  # concurrent POST /events clients of the replay
    batch: int = Field(500, ge=1, le=500)  # events a POST /events
    events: int = Field(200_000, ge=1)     # about this many events replayed (whole rounds over the dev interactions)
    shopper_events: int = Field(5, ge=1)   # consecutive dev events a background shopper repeats
    clients: int = Field(8, ge=1)     # /recommend concurrency during the replay
    warmup_seconds: float = Field(3.0, ge=0)  # the load runs this long before the first event
    probe_every_ms: float = Field(80.0, gt=0)  # a freshness probe this often during the replay
    poll_ms: float = Field(2.0, gt=0)  # how often the applied markers are polled
    eval_clients: int = Field(8, ge=1)  # concurrency of the live and frozen evaluation calls
    kill_events: int = Field(100_000, ge=1)  # about this many events in each kill replay
    kill_every_seconds: float = Field(3.0, gt=0)  # a processor SIGKILLed this often
    kill_publish_rate: float | None = None  # events/s of `stream publish` in the kill replays (null: full speed)
    replay_timeout_s: float = 900
    drain_timeout_s: float = 120
    ready_timeout_s: float = 180
    seed: int = 0


def _pin(cores: int) -> list[int] | None:
    """Run this process, and every process and thread it starts from now on, on the first `cores` CPUs."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return None
    chosen = sorted(os.sched_getaffinity(0))[:cores]
    os.sched_setaffinity(0, chosen)
    return chosen


def _live_users(client, state, users: list[str], key: bytes) -> int:
    """How many of the (raw) users have a live history."""
    from pipelines.core.privacy import pseudonym

    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.exists(state.history_key(pseudonym(user, key)))
    return int(sum(pipe.execute()))


def run(path: Path, json_out: Path | None, bench_file: Path | None = None) -> dict:
    import pandas as pd
    import redis

    from pipelines.bench.faults import build_bundle, use_shop_key
    from pipelines.bench.served import RedisServer, Server, metric_value
    from pipelines.bench.recommend import dataset_name
    from pipelines.bench.stream.data import dev_events, replay_events, test_positives, train_only_folder
    from pipelines.bench.stream.kill import kill_replay
    from pipelines.bench.stream.live import Processors
    from pipelines.bench.stream.replay import judged, live_lists, replay_while_serving, served_lists
    from pipelines.bench.workspace import bench_params
    from pipelines.core.config import load_settings
    from pipelines.core.privacy import existing_key
    from pipelines.feedback.live_state import LiveState
    from pipelines.feedback.stream import StreamNames

    params = bench_params("stream", StreamBenchParams, bench_file)
    cores = _pin(params.cores)
    started = time.perf_counter()
    source = Path(path)
    dataset = dataset_name(source)
    workspace = Path(params.work_dir.format(dataset=dataset)).resolve()
    runs = workspace / "runs"
    shutil.rmtree(runs, ignore_errors=True)

    split = train_only_folder(source, workspace / "source")
    overrides = {"ingest.source": "rechorus", "ingest.path": str(workspace / "source"), **params.pipeline}
    bundle, params_path = build_bundle(workspace, overrides, revision=f"stream-{dataset}")
    build_seconds = round(time.perf_counter() - started, 1)
    use_shop_key(workspace)
    settings = load_settings(params_path)
    key = existing_key(settings.privacy.key_env, os.environ.get("SHOPFUSION_PII_KEY_FILE",
                                                                str(workspace / settings.privacy.key_file)))
    positives = test_positives(source)
    dev = dev_events(source)
    events = replay_events(dev, params.events, params.shopper_events)
    items = pd.read_parquet(bundle / "items.parquet")["item_id"].astype(str).tolist()
    users = sorted(positives)
    load_users = list(users)
    random.Random(params.seed).shuffle(load_users)

    with Progress(transient=True) as progress:
        task = progress.add_task("stream: replay while serving", total=4)
        with RedisServer() as redis_server:
            client = redis.Redis.from_url(redis_server.url)
            names = StreamNames.from_prefix(settings.stream.prefix)
            state = LiveState.from_params(client, names.state_prefix, settings.stream,
                                          settings.clean.session_gap_minutes * 60)
            with Processors(params.processors, "bench", redis_server.url, params_path, runs / "processors") \
                    as processors, Server(bundle, runs / "live", workers=params.workers,
                                          extra_env={"SHOPFUSION_REDIS_URL": redis_server.url}) as server:
                processors.wait_joined(client, names, params.ready_timeout_s)
                processes = {"server": [server.process.pid], "redis": [redis_server.process.pid],
                             "processors": [process.pid for process in processors.processes]}
                replay = replay_while_serving(server.url, server.headers, client, state, events, load_users, items,
                                              params, processes)
                progress.update(task, advance=1, description="stream: live evaluation")
                live_answers = live_lists(server.url, server.headers, users, params.eval_clients,
                                          settings.serving.cache.redis_retry_seconds)
                live_unavailable = metric_value(server.metrics(), "shopfusion_live_unavailable")
                live_users = _live_users(client, state, users, key)
        progress.update(task, advance=1, description="stream: frozen evaluation")
        with Server(bundle, runs / "frozen", workers=params.workers) as server:
            frozen_answers = served_lists(server.url, server.headers, users, params.eval_clients)
        progress.update(task, advance=1, description="stream: kill replay")
        kill = kill_replay(replay_events(dev, params.kill_events, params.shopper_events), settings, params_path,
                           runs / "kill", params)
        progress.advance(task)

    live = {**judged(live_answers["lists"], positives), "users_with_live_history": live_users,
            # answers the service gave without the live state (a Redis read timed out): asked again after the
            # circuit's retry; the first pass as served, and the service's own count (replay and evaluation)
            "live_unavailable_answers": live_answers["live_unavailable"],
            "still_unavailable": live_answers["still_unavailable"],
            "first_pass": judged(live_answers["first_lists"], positives),
            "live_unavailable_metric": live_unavailable,
            "unanswered": live_answers["unanswered"], "p95_ms": live_answers["p95_ms"]}
    frozen = {**judged(frozen_answers["lists"], positives), "unanswered": frozen_answers["unanswered"],
              "p95_ms": frozen_answers["p95_ms"]}
    document = {
        "dataset": dataset, "protocol": PROTOCOL,
        "events_per_second": replay["events_per_second"],
        "freshness_s": replay["freshness_s"],
        "recommend_p95_ms": replay["recommend"]["p95_ms"],
        "live": live, "frozen": frozen,
        "kill_replay": kill,
        "replay": replay,
        "setup": {"cores": cores, "workers": params.workers, "processors": params.processors,
                  "publishers": params.publishers, "clients": params.clients, "batch": params.batch,
                  "dev_events": len(dev), "train_only_split": split, "test_users": len(users)},
        "build_seconds": build_seconds,
    }
    document["targets"] = {name: bool(holds(document)) for name, holds in TARGETS.items()}
    document["seconds"] = round(time.perf_counter() - started, 1)
    print_table(document)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return document


def print_table(document: dict) -> None:
    replay, kill = document["replay"], document["kill_replay"]
    fresh = document["freshness_s"]
    rows = [
        ("events/s (intake + processors, while serving)", f"{document['events_per_second']:,.0f}",
         f"{replay['applied']:,} events in {replay['seconds']} s; intake alone {replay['intake']['events_per_second']}"),
        ("freshness p50 / p95 / p99 (s)", f"{fresh['p50']} / {fresh['p95']} / {fresh['p99']}",
         f"{fresh['probes']} probes, {fresh['unapplied']} unapplied"),
        ("/recommend p95 during the replay (ms)", str(document["recommend_p95_ms"]),
         f"{replay['recommend']['answered']} answered, {replay['recommend']['errors']} errors"),
        ("HR@10 live / frozen", f"{document['live']['hr@10']:.4f} / {document['frozen']['hr@10']:.4f}",
         f"{document['live']['users']} test users"),
        ("NDCG@10 live / frozen", f"{document['live']['ndcg@10']:.4f} / {document['frozen']['ndcg@10']:.4f}", ""),
        ("kill replay: lost / applied twice", f"{kill['lost']} / {kill['applied_twice']}",
         f"{kill['events']:,} events, {kill['kills']} kills"),
        ("kill replay: sink duplicates / missing", f"{kill['sink_duplicates']} / {kill['sink_missing']}", ""),
    ]
    table = Table(title=f"{document['dataset']}: stream ({document['seconds']} s)")
    for column in ("figure", "value", "detail"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    targets = Table(title="targets")
    targets.add_column("target")
    targets.add_column("holds")
    for name, holds in document["targets"].items():
        targets.add_row(name, "yes" if holds else "NO")
    Console().print(targets)
