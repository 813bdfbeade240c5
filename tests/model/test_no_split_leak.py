"""No split leak: the fitted search fusion gains nothing from an item's absence from the training labels.

On Home Depot every catalog product comes from a judged pair, so "never judged by a training query"
marks the products of held-out queries. This builds a catalog with exactly that mark and nothing
else: each held-out query's candidates are 3 relevant products that no training query judged and 27
irrelevant ones that training queries judged, all titled alike (a training query's word, the query's
word once, two fillers), at catalog positions in random order. The fuse and evaluate stages run on it as they ship;
the stack must rank no better than chance there. A stack given the judged count per item (the
feature the old benchmark had) ranks almost perfectly on the same data, so the test can fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core import metrics
from pipelines.ranking import fused, fusion
from pipelines.ranking.params import load_components
from pipelines.ranking.tasks import load_matcher, stack_inputs, task_data
from pipelines.stages.evaluate import evaluate
from pipelines.stages.fuse import fit_fusion
from pipelines.stages.recall import fit_recall
from tests.conftest import with_sections

FILLER = [f"filler{index}" for index in range(300)]
RANKING = {"search_components": ["bm25"], "recommend_components": ["popularity"], "candidates_per_component": 30,
           "search_reranker": None, "eval_ks": [10]}
HELD_OUT = {"valid": 40, "test": 40}
TRAIN_QUERIES, PER_TRAIN_QUERY, FRESH, REUSED = 120, 30, 3, 27


def leaky_features_dir(root, seed: int = 0):
    """items, judgments (train/valid/test) and no interactions, with the absence-from-training mark only."""
    rng = np.random.default_rng(seed)
    titles, judgments = [], []

    def new_item(words):
        titles.append(words + list(rng.choice(FILLER, 4 - len(words), replace=False)))
        return len(titles) - 1

    for query in range(TRAIN_QUERIES):
        for _ in range(PER_TRAIN_QUERY):
            judgments.append((f"train{query}", f"word{query}", new_item([f"word{query}"]), float(rng.integers(0, 3)),
                              "train"))
    judged_in_train = list(range(len(titles)))
    held_out = [(split, index) for split, count in HELD_OUT.items() for index in range(count)]
    for number, (split, index) in enumerate(held_out, start=TRAIN_QUERIES):
        word = f"word{number}"
        for item in rng.choice(judged_in_train, REUSED, replace=False):
            titles[item][-1] = word  # a training product now also holds this query's word (length unchanged):
            # its title is a training query's word, two fillers and this query's word, as a fresh product's
            judgments.append((f"{split}{index}", word, int(item), 0.0, split))
        for _ in range(FRESH):
            # shaped like a reused product: a training query's word, this query's word, two fillers; only no
            # training query judged it (with three fillers it differed in text too, which character trigrams saw)
            decoy = f"word{rng.integers(TRAIN_QUERIES)}"
            judgments.append((f"{split}{index}", word, new_item([decoy, word]), 2.0, split))
    order = rng.permutation(len(titles))  # catalog positions say nothing about the split
    position = np.empty(len(titles), dtype=np.int64)
    position[order] = np.arange(len(titles))
    text = [" ".join(titles[i]) for i in order]
    items = pd.DataFrame({"position": np.arange(len(titles)), "item_id": [f"p{i}" for i in range(len(titles))],
                          "title": text, "text": text, "category": "", "brand": "", "price": np.nan})
    judged = pd.DataFrame(judgments, columns=["query_id", "query", "item", "relevance", "split"])
    judged["item"] = position[judged["item"].to_numpy()]
    interactions = pd.DataFrame({"user": pd.Series(dtype=str), "item": pd.Series(dtype="int64"),
                                 "timestamp": pd.Series(dtype="datetime64[ns, UTC]"), "event_type": pd.Series(dtype=str),
                                 "weight": pd.Series(dtype=float), "split": pd.Series(dtype=str)})
    root.mkdir(parents=True, exist_ok=True)
    items.to_parquet(root / "items.parquet", index=False)
    judged.to_parquet(root / "judgments.parquet", index=False)
    interactions.to_parquet(root / "interactions.parquet", index=False)
    return judged


def chance_ndcg(candidates: np.ndarray, gains: list[dict], rounds: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([metrics.ranking_report(fused.rank_candidates(candidates, rng.random(candidates.shape)),
                                                 gains, ks=(10,))["ndcg@10"] for _ in range(rounds)]))


@pytest.fixture(scope="module")
def leak_run(tmp_path_factory, tiny_settings):
    root = tmp_path_factory.mktemp("leak")
    judged = leaky_features_dir(root / "features")
    settings = with_sections(tiny_settings, ranking=RANKING,
                             fusion={"folds": 2, "lambdarank": {"n_estimators": 200, "min_child_samples": 5}})
    fit_recall(root / "features", root / "recall", settings)
    fit_fusion(root / "features", root / "recall", root / "fusion", settings)
    results = evaluate(root / "features", root / "recall", root / "fusion", root / "m.json", root / "p.csv", settings)
    return {"root": root, "settings": settings, "judged": judged, "results": results}


def test_the_catalog_carries_the_mark(leak_run):
    judged = leak_run["judged"]
    in_train = set(judged.loc[judged["split"] == "train", "item"])
    test = judged[judged["split"] == "test"]
    assert not set(test.loc[test["relevance"] > 0, "item"]) & in_train
    assert set(test.loc[test["relevance"] == 0, "item"]) <= in_train


def test_the_shipped_stack_gains_nothing_from_it(leak_run):
    root, settings = leak_run["root"], leak_run["settings"]
    components = load_components(root / "recall", ["bm25"])
    test = task_data("search", "test", root / "features", components, fused_params(settings))
    chance = chance_ndcg(test.candidates, test.gains)
    assert all(len(gains) == FRESH + REUSED for gains in test.gains)
    assert leak_run["results"]["search"]["lambdarank"]["ndcg@10"] <= chance + 0.08
    assert leak_run["results"]["search"]["weighted"]["ndcg@10"] <= chance + 0.08


def test_a_stack_with_the_judged_count_would_exploit_it(leak_run):
    root, settings = leak_run["root"], leak_run["settings"]
    judged = leak_run["judged"]
    counts = np.bincount(judged.loc[judged["split"] == "train", "item"], minlength=judged["item"].max() + 1)
    components = load_components(root / "recall", ["bm25"])
    matcher = load_matcher(root / "fusion", "search")
    params = fused_params(settings)
    data = {split: task_data("search", split, root / "features", components, params) for split in ("valid", "test")}

    def leaky(split):
        features, names = stack_inputs(data[split], matcher)
        count = counts[np.maximum(data[split].candidates, 0)][..., None].astype(np.float32)
        return np.concatenate([features, count], axis=2), names + ["item_judged_count"]

    features, names = leaky("valid")
    lambdarank = settings.fusion.lambdarank.model_copy(update={"n_estimators": 200, "min_child_samples": 5})
    stack = fusion.LambdaRankFusion(lambdarank, settings.fusion.metric_k).fit(
        features, names, data["valid"].gain_matrix)
    ranked = fused.rank_candidates(data["test"].candidates, stack.score(leaky("test")[0]))
    leaked = metrics.ranking_report(ranked, data["test"].gains, ks=(10,))["ndcg@10"]
    assert leaked >= 0.9 > leak_run["results"]["search"]["lambdarank"]["ndcg@10"] + 0.3


def fused_params(settings):
    return settings.ranking
