"""The Home Depot search benchmark on a tiny synthetic Home Depot-style CSV: it runs the dvc.yaml stages in a
workspace and reports what evaluate measured there, the served fusion marked as shipped."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.bench import search
from pipelines.core.config import load_settings
from pipelines.ranking.text_match import FEATURES as TITLE_FEATURES

TYPES = ["drill", "hammer", "faucet", "lamp", "hose", "ladder", "saw", "paint", "mower", "fan"]
ATTRIBUTES = ["cordless", "steel", "white", "outdoor", "compact", "heavy duty", "brass", "led"]
BRANDS = ["Acme", "Bolt", "Crest", "Delta"]


def write_home_depot_csv(folder, seed: int = 0) -> None:
    """Products named brand + attribute + type; each query 'attribute type' judges 4 products (3 = exact match)."""
    generator = np.random.default_rng(seed)
    products = [(1000 + i, f"{BRANDS[i % 4]} {ATTRIBUTES[(i // 4) % 8]} {TYPES[(i // 32) % 10]} model {i}")
                for i in range(220)]
    rows, row_id = [], 1
    for query_number in range(70):
        attribute, kind = ATTRIBUTES[query_number % 8], TYPES[(query_number * 3) % 10]
        term = f"{attribute} {kind}" + (f" {query_number}" if query_number >= 40 else "")
        exact = [p for p in products if attribute in p[1] and f" {kind} " in p[1]]
        partial = [p for p in products if f" {kind} " in p[1] and p not in exact]
        other = products
        for pool, relevance in ((exact, 3.0), (exact, 2.67), (partial, 2.0), (other, 1.0)):
            if pool:
                uid, title = pool[generator.integers(len(pool))]
                rows.append((row_id, uid, title, term, relevance))
                row_id += 1
    frame = pd.DataFrame(rows, columns=["id", "product_uid", "product_title", "search_term", "relevance"])
    frame.to_csv(folder / "train.csv", index=False, encoding="latin-1")


TINY_LOOP = {"max_steps": 2, "batch_size": 8, "max_seq_length": 24}
TINY_PIPELINE = {
    "finetune.bi_encoder": TINY_LOOP, "finetune.cross_encoder": TINY_LOOP, "finetune.device": "cpu",
    "text.dense.batch_size": 64, "text.dense.device": "cpu", "text.cross_encoder.device": "cpu",
    "ranking.search_components": ["bm25", "dense"], "ranking.recommend_components": ["popularity"],
    "ranking.rerank_depth": 5, "ranking.candidates_per_component": 20,
    "features.query_valid_fraction": 0.3,
    "fusion.folds": 2, "fusion.lambdarank": {"n_estimators": 20, "cv_folds": 2, "min_child_samples": 2},
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("home_depot")
    write_home_depot_csv(folder)
    bench_params = folder / "bench.yaml"
    bench_params.write_text(yaml.safe_dump({"search": {"work_dir": str(folder / "work"), "pipeline": TINY_PIPELINE}}))
    out = folder / "result.json"
    document = search.run(folder, out, bench_params)
    again = search.run(folder, folder / "again.json", bench_params)
    return {"document": document, "out": out, "again": again, "workspace": folder / "work"}


pytestmark = pytest.mark.slow


def test_the_workspace_runs_the_pipeline_on_the_dataset(bench_run):
    settings = load_settings(bench_run["workspace"] / "params.yaml")
    assert settings.ingest.source == "home-depot"
    assert (bench_run["workspace"] / "data" / "features" / "judgments.parquet").exists()
    ran = bench_run["document"]["stage_seconds"]
    assert list(ran) == ["ingest", "validate", "clean", "features", "finetune", "recall", "fuse", "evaluate"]
    assert all(seconds > 0 for seconds in ran.values())


def test_figures_are_what_evaluate_measured(bench_run):
    written = json.loads(bench_run["out"].read_text())
    evaluated = json.loads((bench_run["workspace"] / "metrics" / "evaluate.json").read_text())["search"]
    assert written["dataset"] == "home-depot" and written["seconds"] > 0
    assert set(written["methods"]) == {name for name, values in evaluated.items()
                                       if isinstance(values, dict) and values.get("kind") in ("component", "fusion")}
    for name, values in written["methods"].items():
        assert values["ndcg@10"] == evaluated[name]["ndcg@10"], name
    assert {"bm25", "dense", "rrf", "weighted", "lambdarank", "lambdarank+cross_encoder"} <= set(written["methods"])
    assert written["methods"]["bm25"]["ndcg@10"] > 0.2, "exact-match titles are easy for BM25"


def test_the_served_fusion_is_marked_with_its_features(bench_run):
    methods = bench_run["document"]["methods"]
    shipped = [name for name, values in methods.items() if values.get("shipped")]
    served = json.loads((bench_run["workspace"] / "models" / "fusion" / "search" / "served.json").read_text())
    assert shipped == [served["method"]] == ["lambdarank"]  # auto: the stack's CV NDCG is far above the weighted one's
    card = json.loads((bench_run["workspace"] / "models" / "fusion" / "search" / "lambdarank" / "lambdarank.json")
                      .read_text())
    assert methods["lambdarank"]["features"] == card["feature_names"]
    assert set(TITLE_FEATURES) <= set(card["feature_names"]) and "bm25_score" in card["feature_names"]
    assert 0 < methods["lambdarank"]["rmse"] < 2
    relevance = bench_run["document"]["relevance"]
    assert relevance["pairs"] > 0 and 0 < relevance["rmse_predicting_mean"] < 2


def test_an_unchanged_workspace_is_not_run_again(bench_run):
    assert set(bench_run["again"]["stage_seconds"].values()) == {0.0}
    assert bench_run["again"]["methods"] == bench_run["document"]["methods"]
