"""`shopfusion bench stream` end to end on a tiny folder in the amazon-office layout, with small loads: the dvc.yaml
stages build the bundle from the train interactions alone, a real 1-worker server and real processors take the dev
interactions through POST /events under /recommend load, and the kill replay SIGKILLs processors: nothing is lost
or applied twice, and the sink holds each event once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pipelines.bench import stream
from pipelines.bench.workspace import bench_settings
from tests.model.test_bench_recommend import N_USERS, TINY_PIPELINE, write_toys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the benchmark's own pipeline settings with the tiny budgets of the recommend bench's test; loads of a few seconds
TINY_LOADS = {"cores": 0, "workers": 1, "processors": 2, "publishers": 1, "batch": 100, "events": 3000,
              "clients": 2, "warmup_seconds": 0.5, "probe_every_ms": 20, "eval_clients": 4,
              "kill_events": 4000, "kill_every_seconds": 2.0, "kill_publish_rate": 800, "replay_timeout_s": 300,
              "drain_timeout_s": 90}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    toys = write_toys(root / "Toys")
    pipeline = {**bench_settings("stream")["pipeline"], **TINY_PIPELINE}
    bench_file = root / "bench.yaml"
    bench_file.write_text(yaml.safe_dump({"stream": {"work_dir": str(root / "work"), "pipeline": pipeline,
                                                     **TINY_LOADS}}))
    out = root / "stream.json"
    document = stream.run(toys, out, bench_file)
    return {"document": document, "out": out, "workspace": root / "work", "toys": toys}


def test_the_json_holds_the_issue_s_figures(bench_run):
    document = json.loads(bench_run["out"].read_text())
    assert document == json.loads(json.dumps(bench_run["document"], default=str))
    for key in ("events_per_second", "freshness_s", "recommend_p95_ms", "live", "frozen", "kill_replay", "seconds"):
        assert key in document, key
    assert set(document["freshness_s"]) >= {"p50", "p95", "p99"}
    for side in ("live", "frozen"):
        assert set(document[side]) >= {"hr@10", "ndcg@10"} and document[side]["users"] == N_USERS
        assert document[side]["unanswered"] == 0
    assert set(document["kill_replay"]) >= {"events", "lost", "applied_twice", "sink_duplicates"}
    replay = document["replay"]
    assert replay["all_applied"] and replay["applied"] == replay["events"] + replay["probes_sent"]
    assert document["events_per_second"] > 0 and document["freshness_s"]["probes"] > 0
    assert replay["recommend"]["answered"] > 0 and replay["recommend"]["errors"] == 0


def test_the_bundle_never_saw_the_dev_or_test_interactions(bench_run):
    workspace = bench_run["workspace"]
    raw = pd.read_csv(workspace / "data" / "raw" / "events.csv", dtype=str)
    source = bench_run["toys"]
    train = pd.read_csv(source / "train.csv", sep="\t", dtype=str)
    assert len(raw) == len(train)  # the train rows, and nothing else
    held_out = pd.concat([pd.read_csv(source / f"{name}.csv", sep="\t", dtype=str) for name in ("dev", "test")])
    assert not set(zip(held_out["user_id"], held_out["item_id"], held_out["time"])) & set(
        zip(train["user_id"], train["item_id"], train["time"]))
    # the live state adds each test user's dev event: every one of them has a live history after the replay
    assert bench_run["document"]["live"]["users_with_live_history"] == N_USERS
    assert bench_run["document"]["live"]["still_unavailable"] == 0  # every live answer read the live state


def test_the_kill_replay_loses_nothing_and_applies_nothing_twice(bench_run):
    kill = bench_run["document"]["kill_replay"]
    assert kill["kills"] >= 1, kill
    assert kill["clean"]["published"] == kill["killed"]["published"] == kill["events"]
    assert kill["lost"] == 0 and kill["applied_twice"] == 0, kill
    assert kill["clean"]["applied"] == kill["killed"]["applied"] == kill["events"]
    assert kill["comparison"]["counters_equal"] and kill["comparison"]["histories_equal"], kill["comparison"]
    assert kill["sink_duplicates"] == 0 and kill["sink_missing"] == 0, kill["killed"]["sink"]
