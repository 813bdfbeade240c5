"""finetune, recall -> fuse -> evaluate on the tiny shop: artifacts written, fusion fitted on validation only,
fine-tuning fed by the training split only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data import dataset as features_module
from pipelines.ranking import tasks as fuse_module
from pipelines.stages.evaluate import evaluate
from pipelines.stages.features import build_features
from pipelines.stages.fuse import fit_fusion
from pipelines.stages.recall import fit_recall
from tests.conftest import params_section, with_sections

FAST_RANKING = {"search_components": ["bm25", "popularity"],
                "recommend_components": ["popularity", "itemcf", "relations"],
                "candidates_per_component": 30, "eval_ks": [5, 10]}


@pytest.fixture(scope="module")
def settings(tiny_settings):
    return with_sections(tiny_settings, ranking=FAST_RANKING)


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


def test_the_fuse_stage_serves_the_better_cross_validated_fusion(stages):
    """params.yaml's serving.fusion is auto: each task's served.json names the fusion with the higher CV NDCG,
    and evaluate reports that fusion's test figures as the task's served ones."""
    for task in ("search", "recommend"):
        served = json.loads((stages["root"] / "fusion" / task / "served.json").read_text())
        assert served["configured"] == "auto"
        cv = served["cv_ndcg"]
        assert 0.0 < cv["weighted"] <= 1.0 and 0.0 < cv["lambdarank"] <= 1.0
        assert served["method"] == ("weighted" if cv["weighted"] > cv["lambdarank"] else "lambdarank")
        reported = stages["results"][task]["served"]
        assert reported["method"] == served["method"]
        assert reported["ndcg@10"] == stages["results"][task][served["method"]]["ndcg@10"]


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


# ---------------------------------------------------------------- finetune -> recall -> evaluate

SENTINEL_ITEM, HELD_OUT_QUERY = "zzsentinel", "zzheldout"


@pytest.fixture(scope="module")
def finetuned(stages, settings, tmp_path_factory):
    from pipelines.stages.finetune import finetune
    from tests.conftest import TINY_FINETUNE

    root = tmp_path_factory.mktemp("finetune")
    tuned = with_sections(settings, finetune={**TINY_FINETUNE, "device": "cpu",
                                               "checkpoint_dir": str(root / "checkpoints")})
    summary = finetune(stages["root"] / "features", root / "models", tuned, root / "finetune.json")
    return {"root": root, "summary": summary}


def test_finetune_writes_both_models_and_its_metrics(finetuned):
    root, summary = finetuned["root"], finetuned["summary"]
    assert json.loads((root / "finetune.json").read_text()) == summary
    assert summary["search_pairs"] > 0 and summary["recommend_pairs"] == 64
    assert summary["hard_negatives"] > 0 and summary["cross_encoder_negatives"] > 0
    for model in ("bi_encoder", "cross_encoder"):
        result = summary[model]
        assert result["trained"] and result["steps"] == 2 and result["examples"] == 16
        assert result["examples_per_second"] > 0 and len(result["last_loss"]) == 1
        assert (root / "models" / model / "config.json").exists()
    assert (root / "models" / "bi_encoder" / "modules.json").exists(), "a sentence-transformers folder"
    leftovers = [path for path in (root / "checkpoints").rglob("*") if path.is_file()]
    assert leftovers == [], "the resumable work is removed once the stage is done"


def test_recall_and_evaluate_use_the_finetuned_models(stages, settings, finetuned, tmp_path):
    import numpy as np

    from pipelines.models.rankers.dense import DenseRetriever

    models = finetuned["root"] / "models"
    ranking = {**FAST_RANKING, "search_components": ["bm25", "dense"], "recommend_components": ["popularity"],
               "search_reranker": "cross_encoder", "rerank_depth": 5}
    text = {"dense": {"model_path": str(models / "bi_encoder"), "device": "cpu"},
            "cross_encoder": {"model_path": str(models / "cross_encoder"), "device": "cpu"}}
    tuned = with_sections(settings, ranking=ranking, text=text)
    features = stages["root"] / "features"
    fit_recall(features, tmp_path / "recall", tuned)
    fit_fusion(features, tmp_path / "recall", tmp_path / "fusion", tuned)
    results = evaluate(features, tmp_path / "recall", tmp_path / "fusion", tmp_path / "m.json", tmp_path / "p.csv",
                       tuned)

    saved = np.load(tmp_path / "recall" / "dense" / "dense" / "item_embeddings.npy")
    data = features_module.load_training_data(features)
    raw = DenseRetriever(params_section("text.dense", model_path=None, device="cpu")).fit(data).item_embeddings
    tuned_again = DenseRetriever(params_section("text.dense", model_path=str(models / "bi_encoder"), device="cpu")).fit(data)
    tuned_again = tuned_again.item_embeddings
    assert np.allclose(saved, tuned_again, atol=1e-5) and not np.allclose(saved, raw, atol=1e-3)
    assert {"weighted+cross_encoder", "lambdarank+cross_encoder"} <= set(results["search"])
    blend = json.loads((tmp_path / "fusion" / "search" / "weighted+cross_encoder.json").read_text())
    assert set(blend["weights"]) == {"stage_one", "cross_encoder"}, "the re-ranker's weight is fitted on validation"
    assert "cross_encoder" not in results["search"], "the re-ranker is not a served component"
    assert "weighted+cross_encoder" not in results["recommend"]


@pytest.fixture(scope="module")
def features_with_sentinels(stages, tmp_path_factory):
    """The tiny features, every held-out interaction and judgment moved to a sentinel item, held-out queries marked."""
    import shutil

    folder = tmp_path_factory.mktemp("sentinel_features")
    for path in (stages["root"] / "features").iterdir():
        shutil.copy(path, folder / path.name)
    items = pd.read_parquet(folder / "items.parquet")
    sentinel = len(items)
    row = {"position": sentinel, "item_id": "SENTINEL", "title": SENTINEL_ITEM, "text": SENTINEL_ITEM,
           "category": "", "brand": "", "price": 1.0}
    pd.concat([items, pd.DataFrame([row])], ignore_index=True).to_parquet(folder / "items.parquet", index=False)
    interactions = pd.read_parquet(folder / "interactions.parquet")
    interactions.loc[interactions["split"] != "train", "item"] = sentinel
    interactions.to_parquet(folder / "interactions.parquet", index=False)
    judgments = pd.read_parquet(folder / "judgments.parquet")
    held_out = judgments["split"] != "train"
    judgments.loc[held_out, "item"] = sentinel
    judgments.loc[held_out, "query"] = HELD_OUT_QUERY + " " + judgments.loc[held_out, "query"]
    judgments.to_parquet(folder / "judgments.parquet", index=False)
    return folder


def _texts_that_come_from_data(examples) -> list[str]:
    """Anchors, positives and judged cross-encoder rows: everything not mined from the catalog."""
    bi, cross = examples.bi_encoder, examples.cross_encoder
    judged = cross[cross["relevance"].notna()]
    return [*bi["anchor"], *bi["positive"], *cross["query"], *judged["text"]]


def test_held_out_queries_and_interactions_never_reach_finetune_pairs(features_with_sentinels, settings, tmp_path,
                                                                      monkeypatch):
    from pipelines.models.training import TrainResult
    from pipelines.stages import finetune as finetune_module
    from tests.conftest import TINY_FINETUNE

    tuned = with_sections(settings, finetune={**TINY_FINETUNE, "max_recommend_pairs": 100_000})
    every_split = finetune_module.build_examples(
        features_module.load_training_data(features_with_sentinels, ("train", "valid", "test")), tuned)
    leaked = " ".join(_texts_that_come_from_data(every_split))
    assert SENTINEL_ITEM in leaked and HELD_OUT_QUERY in leaked, "the sentinels must be detectable"

    seen = {}

    def spy(kind):
        def trainer(examples, out_dir, params):
            seen[kind] = examples
            (Path(out_dir) / "model").mkdir(parents=True)
            return TrainResult(Path(out_dir) / "model", 1, 1, 1.0)
        return trainer

    monkeypatch.setattr(finetune_module, "train_bi_encoder", spy("bi_encoder"))
    monkeypatch.setattr(finetune_module, "train_cross_encoder", spy("cross_encoder"))
    summary = finetune_module.finetune(features_with_sentinels, tmp_path / "models", tuned)
    assert summary["recommend_pairs"] > 0 and summary["search_pairs"] > 0
    trained = finetune_module.Examples(seen["bi_encoder"].assign(task=""), seen["cross_encoder"], {})
    texts = " ".join(_texts_that_come_from_data(trained))
    assert SENTINEL_ITEM not in texts and HELD_OUT_QUERY not in texts


def test_evaluate_reports_every_method_on_each_slice(stages):
    for task, pairs in (("search", [("head_query", "tail_query"), ("short_query", "long_query"),
                                    ("corrected_query", "uncorrected_query")]),  # BM25's spelling corrector
                        ("recommend", [("cold_user", "warm_user")])):
        result = stages["results"][task]
        slices = result["slices"]
        methods = [name for name, value in result.items() if isinstance(value, dict)
                   and value.get("kind") in ("component", "fusion")]
        for first, second in pairs:  # whole-request slices split the requests: their NDCGs average to the total's
            assert slices[first]["requests"] + slices[second]["requests"] == result["requests"]
            for method in methods:
                parts = [(slices[name]["requests"], slices[name].get(method, {}).get("ndcg@10", 0.0))
                         for name in (first, second)]
                mean = sum(count * value for count, value in parts) / result["requests"]
                assert mean == pytest.approx(result[method]["ndcg@10"], abs=2e-5)
    recommend = stages["results"]["recommend"]["slices"]
    assert recommend["warm_item"]["requests"] > 0
    assert recommend["cold_item"]["requests"] + recommend["warm_item"]["requests"] >= stages["results"]["recommend"]["requests"]
