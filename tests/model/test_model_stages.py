"""recall -> fuse -> evaluate on the tiny shop: artifacts written, fusion fitted on validation only."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines import features as features_module
from pipelines import fuse as fuse_module
from pipelines.config import Settings
from pipelines.evaluate import evaluate
from pipelines.features import build_features
from pipelines.fuse import fit_fusion
from pipelines.recall import fit_recall

FAST_RANKING = {"search_components": ["bm25", "popularity"],
                "recommend_components": ["popularity", "itemcf", "relations"],
                "candidates_per_component": 30, "eval_ks": [5, 10]}


@pytest.fixture(scope="module")
def settings(tiny_settings):
    document = tiny_settings.model_dump(by_alias=True)
    document["ranking"] = FAST_RANKING
    return Settings.model_validate(document)


@pytest.fixture(scope="module")
def stages(tiny_run, settings, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("models")
    build_features(tiny_run["clean"], root / "features", settings)
    asked_splits = []
    patch = pytest.MonkeyPatch()
    for name in ("search_requests", "recommend_requests"):
        original = getattr(features_module, name)

        def recording(features_dir, split, _original=original):
            asked_splits.append(split)
            return _original(features_dir, split)

        patch.setattr(fuse_module, name, recording)
    fit_recall(root / "features", root / "recall", settings)
    fit_fusion(root / "features", root / "recall", root / "fusion", settings)
    fusion_splits = list(asked_splits)
    results = evaluate(root / "features", root / "recall", root / "fusion", root / "metrics.json",
                       root / "plot.csv", settings)
    patch.undo()
    return {"root": root, "fusion_splits": fusion_splits, "eval_splits": asked_splits[len(fusion_splits):],
            "results": results}


def test_fusion_is_fitted_on_the_validation_split_only(stages):
    assert stages["fusion_splits"] == ["valid", "valid"]
    assert stages["eval_splits"] == ["test", "test"]


def test_every_component_is_saved_and_weights_are_readable(stages):
    root = stages["root"]
    assert {path.name for path in (root / "recall").iterdir() if path.is_dir()} == {
        "bm25", "popularity", "itemcf", "relations"}
    for task, components in (("search", FAST_RANKING["search_components"]),
                             ("recommend", FAST_RANKING["recommend_components"])):
        weights = json.loads((root / "fusion" / task / "weighted.json").read_text())
        assert set(weights["weights"]) == set(components)
        assert abs(sum(weights["weights"].values()) - 1) < 1e-6
        assert (root / "fusion" / task / "lambdarank").is_dir()


def test_evaluation_writes_metrics_and_a_curve_and_beats_popularity(stages):
    results = stages["results"]
    assert json.loads((stages["root"] / "metrics.json").read_text()) == results
    curve = pd.read_csv(stages["root"] / "plot.csv")
    assert set(curve["k"]) == {5, 10} and set(curve["task"]) == {"search", "recommend"}
    for task in ("search", "recommend"):
        methods = {name: value for name, value in results[task].items() if isinstance(value, dict)}
        assert {"rrf", "weighted", "lambdarank"} <= set(methods)
        assert methods["weighted"]["ndcg@10"] > methods["popularity"]["ndcg@10"]
    assert results["search"]["weighted"]["ndcg@10"] >= 0.9 * results["search"]["bm25"]["ndcg@10"]
