"""A task without requests is skipped, not faked: the tiny shop without behaviour events (like Home Depot) has
judged queries but no recommend requests, so fuse and evaluate skip recommend, say why, and the gate copes."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest

from pipelines.core.errors import DataError
from pipelines.stages import promote as promotion
from pipelines.stages.evaluate import evaluate
from pipelines.stages.features import build_features
from pipelines.stages.fuse import fit_fusion
from tests.conftest import params_section


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_fuse_skips_the_task_without_validation_requests(no_events_run):
    summary, root = no_events_run["summary"], no_events_run["root"]
    skipped = summary["recommend"]
    assert set(skipped) == {"requests", "skipped"} and skipped["requests"] == 0
    assert "no recommend request" in skipped["skipped"] and "valid split" in skipped["skipped"]
    assert str(no_events_run["features"]) in skipped["skipped"]
    assert summary["search"]["requests"] > 0 and set(summary["search"]["weights"]) == {"bm25", "popularity"}
    assert sorted(path.name for path in (root / "fusion").iterdir()) == ["search"], "no fusion files for recommend"
    assert (root / "fusion" / "search" / "weighted.json").is_file()
    assert (root / "fusion" / "search" / "lambdarank").is_dir()


def test_the_skip_is_a_structured_log_line_with_its_reason(no_events_run, tmp_path):
    logger, records = logging.getLogger("pipelines.stages.fuse"), Records()
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        summary = fit_fusion(no_events_run["features"], no_events_run["root"] / "recall", tmp_path / "fusion",
                             no_events_run["settings"])
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    skips = [record for record in records.records if record.getMessage() == "fusion skipped"]
    assert len(skips) == 1 and skips[0].levelno == logging.WARNING
    assert skips[0].task == "recommend" and skips[0].reason == summary["recommend"]["skipped"]
    fitted = [record.task for record in records.records if record.getMessage() == "fusion fitted"]
    assert fitted == ["search"]


def test_evaluate_skips_it_too_and_writes_no_figures_for_it(no_events_run):
    metrics, root = no_events_run["metrics"], no_events_run["root"]
    assert json.loads((root / "metrics.json").read_text()) == metrics
    assert set(metrics["recommend"]) == {"requests", "skipped"} and metrics["recommend"]["requests"] == 0
    assert "test split" in metrics["recommend"]["skipped"]
    search = metrics["search"]
    assert search["requests"] > 0 and {"bm25", "popularity", "rrf", "weighted", "lambdarank"} <= set(search)
    assert 0.0 <= search["lambdarank"]["ndcg@10"] <= 1.0
    assert set(pd.read_csv(root / "plot.csv")["task"]) == {"search"}


def test_evaluate_skips_a_task_with_test_requests_but_no_fitted_fusion(no_events_run, tiny_run, tmp_path):
    """Features with events, fusions of the shop without: recommend has test requests, yet nothing to score them."""
    settings = no_events_run["settings"]
    build_features(tiny_run["clean"], tmp_path / "features", settings)
    results = evaluate(tmp_path / "features", no_events_run["root"] / "recall", no_events_run["root"] / "fusion",
                       tmp_path / "metrics.json", tmp_path / "plot.csv", settings)
    assert results["recommend"]["requests"] > 0
    assert results["recommend"]["skipped"].startswith("no fitted fusion in ")
    assert set(results["recommend"]) == {"requests", "skipped"} and "lambdarank" in results["search"]


def test_no_requests_for_any_task_is_an_error_naming_the_features_folder(no_events_run, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(no_events_run["features"], features)
    judgments = pd.read_parquet(features / "judgments.parquet")
    judgments.iloc[:0].to_parquet(features / "judgments.parquet", index=False)
    with pytest.raises(DataError, match="no task has requests") as fuse_error:
        fit_fusion(features, no_events_run["root"] / "recall", tmp_path / "fusion", no_events_run["settings"])
    assert str(features) in str(fuse_error.value) and not (tmp_path / "fusion").exists()
    with pytest.raises(DataError, match="nothing to evaluate") as evaluate_error:
        evaluate(features, no_events_run["root"] / "recall", no_events_run["root"] / "fusion",
                 tmp_path / "metrics.json", tmp_path / "plot.csv", no_events_run["settings"])
    assert str(features) in str(evaluate_error.value) and not (tmp_path / "metrics.json").exists()


def test_the_default_promotion_gate_reads_the_skipped_shape(no_events_run):
    """The metrics as package.py puts them into bento.json: recommend's gate metric is in neither deployment."""
    gate_metrics = params_section("promotion").metrics
    assert any(metric.startswith("recommend.") for metric in gate_metrics)
    metrics = no_events_run["metrics"]
    result = promotion.gate(metrics, json.loads(json.dumps(metrics)), gate_metrics, 0.0)
    assert result.passed and result.failures == ()
    recommend = [reason for reason in result.reasons if reason.startswith("recommend.")]
    assert len(recommend) == 1 and "not compared" in recommend[0]
    assert metrics["recommend"]["skipped"] in recommend[0]
    gated = next(metric for metric in gate_metrics if metric.startswith("recommend."))  # recommend.<fusion>.ndcg@10
    with_events = {**metrics, "recommend": {"requests": 12, gated.split(".")[1]: {"kind": "fusion", "ndcg@10": 0.3}}}
    lost = promotion.gate(metrics, with_events, gate_metrics, 0.0)
    assert not lost.passed and lost.failures[0].startswith(f"{gated}: missing from the candidate")
    assert "current has 0.30000" in lost.failures[0]
