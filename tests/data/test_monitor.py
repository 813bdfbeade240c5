"""Monitoring on generated windows: a stable window raises nothing, each injected shift raises the alarm
and the retrain decision; feedback proxies act only with enough served lists; run_monitor writes its
reports and decision. Windows are time slices of one defect-free sample shop, as in the drift bench."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.bench import drift
from pipelines.stages import monitor
from tests.conftest import params_section, repo_settings

WINDOWS = 2  # stable windows; one more is the base of the shifted ones


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    settings = repo_settings()
    params = settings.monitor
    bench = drift.bench_params("drift", drift.DriftBenchParams).model_copy(  # benchmarks/params.yaml drift
        update={"trials": 1, "stable_windows": WINDOWS})
    sample = drift.bench_shop(settings, params, bench)
    tables = drift.generated_tables(sample, tmp_path_factory.mktemp("monitor_shop"))
    start = pd.Timestamp(sample.start_date, tz="UTC")
    reference_end = start + pd.Timedelta(days=bench.reference_days)
    window = pd.Timedelta(days=params.window_days)
    reference = drift.time_slice(tables, start, reference_end)
    vocabulary = monitor.catalog_vocabulary(reference["catalog"])
    windows = [drift.time_slice(tables, reference_end + k * window, reference_end + (k + 1) * window)
               for k in range(WINDOWS + 1)]
    return {"params": params, "bench": bench, "vocabulary": vocabulary, "windows": windows,
            "reference": monitor.monitoring_frames(reference, vocabulary)}


def evaluate(shop, tables) -> dict:
    scores = monitor.window_drift(shop["reference"], monitor.monitoring_frames(tables, shop["vocabulary"]),
                                  shop["params"].drift)
    return monitor.decide(scores, {}, shop["params"])


@pytest.mark.parametrize("k", range(WINDOWS))
def test_a_stable_window_raises_nothing(shop, k):
    decision = evaluate(shop, shop["windows"][k])
    assert set(decision["scores"]) == set(shop["params"].drift)
    assert decision == {**decision, "retrain": False, "reasons": [], "drifted": []}


@pytest.mark.parametrize(("shift", "column"), [("category_mix", "department"), ("price_scale", "price"),
                                               ("query_vocabulary", "oov_rate")])
def test_each_injected_shift_raises_the_alarm_and_the_retrain_decision(shop, shift, column):
    base = shop["windows"][WINDOWS]
    assert not evaluate(shop, base)["retrain"]
    moved = drift.inject_shift(base, shift, shop["bench"], np.random.default_rng(0))
    decision = evaluate(shop, moved)
    assert decision["retrain"] and column in decision["drifted"]
    assert any(reason.startswith(f"drift: {column} ") for reason in decision["reasons"])


def test_quality_proxies_act_only_with_enough_feedback():
    params = params_section("monitor", min_feedback_lists=3, min_ctr=0.5)
    popularity = {f"P{i}": 100 - i for i in range(100)}
    feedback = pd.DataFrame({"items": [["P0", "P1"], ["P0", "P2"], ["P1", "P0"], ["P0", "P1"]],
                             "clicked": [None, [], "P0", None]})
    proxies = monitor.quality_proxies(feedback, popularity, n_items=100)
    assert proxies["feedback_lists"] == 4 and proxies["ctr"] == pytest.approx(0.25)
    assert proxies["coverage"] == pytest.approx(0.03)
    assert proxies["popularity_bias"] > 0.95 and proxies["novelty"] > 0
    decision = monitor.decide({}, proxies, params)
    assert decision["retrain"] and any(r.startswith("quality: ctr 0.250 < 0.5") for r in decision["reasons"])
    too_few = monitor.decide({}, proxies, params.model_copy(update={"min_feedback_lists": 5}))
    assert not too_few["retrain"]


def test_run_monitor_writes_reports_snapshots_and_the_decision(tiny_run, tiny_settings, tmp_path):
    from pipelines.stages.features import build_features

    build_features(tiny_run["clean"], tmp_path / "features", tiny_settings)
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    served = [{"items": ["P000001", "P000002"], "clicked": None} for _ in range(120)]
    (feedback / "day1.jsonl").write_text("\n".join(json.dumps(row) for row in served) + "\n")
    kwargs = dict(reference=tmp_path / "features", current=tiny_run["clean"], out=tmp_path / "reports")

    decision = monitor.run_monitor(tiny_settings, tmp_path, feedback=feedback, **kwargs)
    run_dir = tmp_path / "reports" / decision["time"]
    for name in ("events.html", "queries.html", "events.json", "queries.json", "decision.json"):
        assert (run_dir / name).stat().st_size > 0
    assert json.loads((tmp_path / "reports" / "latest.json").read_text()) == decision
    assert decision["quality"]["ctr"] == 0.0 and decision["retrain"]
    assert "quality: ctr 0.000 < 0.02" in decision["reasons"]
    assert decision["rows"]["events"]["current"] > 0 and decision["rows"]["queries"]["reference"] > 0

    without_feedback = monitor.run_monitor(tiny_settings, tmp_path, feedback=tmp_path / "absent", **kwargs)
    assert without_feedback["quality"] == {"feedback_lists": 0}
    assert not any(reason.startswith("quality") for reason in without_feedback["reasons"])
    history = (tmp_path / "reports" / "decisions.jsonl").read_text().splitlines()
    assert len(history) == 2


def served_log(folder, lists: int, age_minutes: float) -> None:
    """The service's own feedback log (served.jsonl) with `lists` lists served `age_minutes` ago, none clicked."""
    import time

    from pipelines.feedback.log import FeedbackLog

    log = FeedbackLog(folder)
    for k in range(lists):
        log.log_served({"request_id": f"r{age_minutes}-{k}", "task": "recommend", "items": ["P0", "P1"],
                        "timestamp": time.time() - age_minutes * 60})
    log.close()


def test_young_lists_without_clicks_do_not_trigger_retraining_old_ones_do(tmp_path):
    from datetime import datetime, timezone

    params = params_section("monitor", feedback_settle_minutes=60)
    lists = params.min_feedback_lists + 50
    popularity = {f"P{i}": 100 - i for i in range(100)}
    now = datetime.now(timezone.utc)

    served_log(tmp_path / "fresh", lists, age_minutes=5)  # the first monitoring run after serving started
    fresh = monitor.feedback_quality(tmp_path / "fresh", popularity, 100, params, now)
    assert fresh == {"feedback_lists": 0, "young_lists": lists}
    assert not monitor.decide({}, fresh, params)["retrain"]

    served_log(tmp_path / "settled", lists, age_minutes=120)  # had their time to be clicked, and were not
    settled = monitor.feedback_quality(tmp_path / "settled", popularity, 100, params, now)
    assert settled["feedback_lists"] == lists and settled["ctr"] == 0.0 and "young_lists" not in settled
    decision = monitor.decide({}, settled, params)
    assert decision["retrain"] and "quality: ctr 0.000 < 0.02" in decision["reasons"]


def test_the_stream_sink_s_recent_partitions_join_the_current_events(tiny_run, tiny_settings, tmp_path):
    """Live events in the sink (not ingested yet) are monitored: those of the window's hours join the current events
    (each event id once), an older partition is left out."""
    from datetime import datetime, timedelta, timezone

    from pipelines.data.sources.stream import parquet_bytes, part_name, partition_dir
    from pipelines.stages.features import build_features

    build_features(tiny_run["clean"], tmp_path / "features", tiny_settings)
    clean_events = pd.read_parquet(tiny_run["clean"] / "events.parquet")
    newest = pd.to_datetime(clean_events["timestamp"], utc=True).max().to_pydatetime()
    now = datetime.now(timezone.utc)
    sink = tmp_path / "sink"

    def write(moment: datetime, count: int, prefix: str) -> None:
        rows = pd.DataFrame({"event_id": [f"{prefix}-{n}" for n in range(count)], "user_id": "u_" + "0" * 20,
                             "item_id": clean_events["item_id"].iloc[0], "event_type": "view",
                             "timestamp": moment.isoformat(), "session_id": None})
        folder = partition_dir(sink, moment)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / part_name(f"{prefix}-0")).write_bytes(parquet_bytes(rows))

    write(now - timedelta(hours=1), 40, "live")
    write(now - timedelta(hours=2), 40, "live")  # the same ids again: a duplicate part counts once
    write(now - timedelta(days=tiny_settings.monitor.window_days + 2), 25, "old")
    recent = monitor.recent_sink_events(sink, now - timedelta(days=tiny_settings.monitor.window_days))
    assert len(recent) == 40 and set(recent["event_id"]) == {f"live-{n}" for n in range(40)}

    settings = tiny_settings.model_copy(update={"monitor": tiny_settings.monitor.model_copy(
        update={"stream_sink": str(sink)})})
    kwargs = dict(reference=tmp_path / "features", current=tiny_run["clean"], out=tmp_path / "reports",
                  feedback=tmp_path / "absent")
    with_sink = monitor.run_monitor(settings, tmp_path, **kwargs)
    without = monitor.run_monitor(tiny_settings.model_copy(update={"monitor": tiny_settings.monitor.model_copy(
        update={"stream_sink": None})}), tmp_path, **kwargs)
    # the live events are the newest: the window now ends at them, so it holds them and none of the old clean days
    window_start = now - timedelta(hours=2) - timedelta(days=tiny_settings.monitor.window_days)
    expected_clean = int((pd.to_datetime(clean_events["timestamp"], utc=True) > window_start).sum())
    assert with_sink["rows"]["events"]["current"] == 40 + expected_clean
    assert without["rows"]["events"]["current"] > 0 and newest < now
