"""The Home Depot search benchmark on a tiny synthetic Home Depot-style CSV: the held-out queries never reach
fine-tuning or fusion fitting, and the run ends in the common JSON form."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.bench import search
from pipelines.core.config import Settings
from pipelines.ranking import fusion

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


def tiny_settings(work_dir) -> Settings:
    loop = {"max_steps": 2, "batch_size": 8, "max_seq_length": 24}
    return Settings.model_validate({
        "finetune": {"bi_encoder": loop, "cross_encoder": loop, "device": "cpu", "checkpoint_every": 2},
        "text": {"dense": {"batch_size": 64}, "cross_encoder": {"batch_size": 64, "rerank_depth": 5}},
        "search_bench": {"candidates": 20, "metric_depth": 100, "work_dir": str(work_dir)},
        "fusion": {"folds": 2, "lambdarank": {"n_estimators": 20, "early_stopping_rounds": 5, "min_child_samples": 2}},
    })


@pytest.fixture(scope="module")
def instrumented_run(tmp_path_factory):
    """One benchmark run with every fitting entry point wrapped to record what it was given."""
    folder = tmp_path_factory.mktemp("home_depot")
    write_home_depot_csv(folder)
    seen = {"fits": [], "bi_encoder": None, "cross_encoder": None, "fusion_rows": [], "splits": None}
    patches = pytest.MonkeyPatch()

    def spy_trainer(name, trainer):
        def wrapped(examples, *args, **kwargs):
            seen[name] = examples.copy()
            return trainer(examples, *args, **kwargs)
        return wrapped

    def spy_fit(method):
        def wrapped(self, features, *args, **kwargs):
            gains = args[1] if isinstance(features, np.ndarray) else args[0]
            seen["fusion_rows"].append(len(gains))
            return method(self, features, *args, **kwargs)
        return wrapped

    original_split = search.split_queries

    def spy_split(n_queries, params):
        seen["splits"] = original_split(n_queries, params)
        return seen["splits"]

    patches.setattr(search, "train_bi_encoder", spy_trainer("bi_encoder", search.train_bi_encoder))
    patches.setattr(search, "train_cross_encoder", spy_trainer("cross_encoder", search.train_cross_encoder))
    patches.setattr(search, "_record_fit", lambda kind, queries: seen["fits"].append((kind, set(np.asarray(queries)))))
    patches.setattr(search, "split_queries", spy_split)
    patches.setattr(fusion.WeightedFusion, "fit", spy_fit(fusion.WeightedFusion.fit))
    patches.setattr(fusion.LambdaRankFusion, "fit", spy_fit(fusion.LambdaRankFusion.fit))
    out = folder / "result.json"
    try:
        document = search.run(folder, out, tiny_settings(folder / "work"))
    finally:
        patches.undo()
    data = search.load_search_data(folder, folder / "reloaded")
    return document, out, seen, data


def test_split_is_a_seeded_partition_of_queries():
    params = search.SearchBenchParams()
    first, again = search.split_queries(1000, params), search.split_queries(1000, params)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    union = np.concatenate(list(first.values()))
    assert len(union) == len(set(union.tolist())) == 1000
    assert len(first["test"]) == 200 and len(first["blend"]) == 160


@pytest.mark.slow
def test_held_out_queries_never_reach_fine_tuning_or_fusion(instrumented_run):
    _, _, seen, data = instrumented_run
    test = set(seen["splits"]["test"].tolist())
    test_texts = {data.query_texts[q] for q in test}
    assert test and seen["fits"], "the run recorded its fits"
    for kind, queries in seen["fits"]:
        assert not queries & test, f"{kind} was fitted on held-out queries"
    assert not set(seen["bi_encoder"]["anchor"]) & test_texts
    assert not set(seen["cross_encoder"]["query"]) & test_texts
    blend = len(seen["splits"]["blend"])
    assert seen["fusion_rows"] and all(rows == blend for rows in seen["fusion_rows"]), \
        "every fusion is fitted on exactly the blend queries"
    fitted = {kind for kind, _ in seen["fits"]}
    assert {"bi_encoder", "cross_encoder", "weighted"} <= fitted


@pytest.mark.slow
def test_end_to_end_json(instrumented_run):
    document, out, _, _ = instrumented_run
    written = json.loads(out.read_text())
    assert written["dataset"] == "home-depot" and written["seconds"] > 0
    expected = {"bm25", "dense_minilm", "dense_finetuned", "cross_encoder", "rrf", "weighted",
                "weighted+cross_encoder", "lambdarank_stack"}
    assert set(written["methods"]) == expected
    for name, values in written["methods"].items():
        assert values["kind"] in ("component", "fusion")
        assert 0.0 <= values["ndcg@10"] <= 1.0 and 0.0 <= values["recall@100"] <= 1.0, name
    assert written["methods"]["bm25"]["ndcg@10"] > 0.2, "exact-match titles are easy for BM25"
    assert 0 < written["rmse"]["stacked_regressor"] < 2 and 0 < written["rmse"]["predict_training_mean"] < 2
    assert written["bi_encoder_training"]["examples_per_second"] > 0
    assert set(written["phase_seconds"]) >= {"load", "finetune_bi_encoder", "cross_encoder_inference", "stack"}
    assert document["methods"] == written["methods"]
