"""The recommendation benchmark on a tiny synthetic folder in the ReChorus layout ("Toys"): it runs the dvc.yaml
stages in a workspace (the benchmark's own settings of benchmarks/params.yaml, budgets cut) and reports what
evaluate measured there; each test positive is ranked among exactly its given negatives."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.bench import recommend
from pipelines.bench.workspace import bench_settings
from pipelines.core.config import load_settings

N_ITEMS, N_CATEGORIES, N_USERS, N_NEGATIVES = 80, 8, 150, 30
FRESH_TEST_ITEMS = range(N_ITEMS + 1, N_ITEMS + 11)  # ids only test positives use


def _id_list(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def write_toys(folder: Path, fresh_test_items: bool = False, seed: int = 0) -> Path:
    """Users walk along each category's complement chain (item i -> i + 1 within its category) with
    some noise; the last step of each user is the test row, the one before it the dev row. With
    fresh_test_items every test positive is one of FRESH_TEST_ITEMS, which no train or dev row has."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    all_ids = list(range(1, N_ITEMS + 1)) + list(FRESH_TEST_ITEMS)
    per_category = N_ITEMS // N_CATEGORIES
    category = {i: (i - 1) // per_category % N_CATEGORIES for i in all_ids}

    def complement(item: int) -> int:
        base = (category[item]) * per_category
        return base + ((item - 1 - base) + 1) % per_category + 1

    (folder / "Toys.item2index").write_text("".join(f"T{i:05d}\t{i}\n" for i in all_ids))
    (folder / "Toys.text").write_text("id\ttext\n" + "".join(
        f"T{i:05d}\tToy {['car', 'doll', 'ball', 'puzzle', 'kite', 'robot', 'train', 'blocks'][category[i]]} model {i}\n"
        for i in all_ids))
    meta = ["item_id\ti_category\ti_brand\tr_complement\tr_substitute"]
    for i in range(1, N_ITEMS + 1):
        meta.append(f"{i}\t{category[i]}\t{i % 5}\t{_id_list([complement(i)])}\t{_id_list([complement(complement(i))])}")
    (folder / "item_meta.csv").write_text("\n".join(meta) + "\n")

    train, dev, test = ["user_id\titem_id\ttime"], ["user_id\titem_id\ttime\tneg_items"], ["user_id\titem_id\ttime\tneg_items"]
    for user in range(1, N_USERS + 1):
        item = int(rng.integers(1, N_ITEMS + 1))
        steps = [item]
        for _ in range(int(rng.integers(5, 10))):
            item = complement(item) if rng.random() < 0.75 else int(rng.integers(1, N_ITEMS + 1))
            steps.append(item)
        if fresh_test_items:
            steps[-1] = int(rng.choice(list(FRESH_TEST_ITEMS)))
        clock = 1_000_000 + user * 1000
        for step, item in enumerate(steps):
            when = clock + step * 10
            if step < len(steps) - 2:
                train.append(f"{user}\t{item}\t{when}")
                continue
            negatives = rng.choice([i for i in range(1, N_ITEMS + 1) if i != item], N_NEGATIVES, replace=False)
            (dev if step == len(steps) - 2 else test).append(f"{user}\t{item}\t{when}\t{_id_list(negatives)}")
    for name, lines in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder


TINY_PIPELINE = {
    "finetune.max_recommend_pairs": 0, "finetune.device": "cpu", "text.dense.device": "cpu",
    "text.cross_encoder.device": "cpu",
    "ranking.recommend_components": ["popularity", "itemcf", "relations", "sasrec"],
    "sasrec.epochs": 2, "sasrec.hidden": 16, "sasrec.heads": 1, "sasrec.inner": 32, "sasrec.max_len": 10,
    "sasrec.batch": 64, "sasrec.device": "cpu",
    "fusion.folds": 2, "fusion.weight_grid": [0, 0.5, 1, 2], "fusion.rounds": 1,
    "fusion.lambdarank": {"n_estimators": 60, "num_leaves": 7, "min_child_samples": 5, "cv_folds": 2},
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend")
    toys = write_toys(root / "Toys")
    pipeline = {**bench_settings("recommend")["pipeline"], **TINY_PIPELINE}  # the benchmark's own settings, cut
    bench_params = root / "bench.yaml"
    bench_params.write_text(yaml.safe_dump({"recommend": {"work_dir": str(root / "work"), "pipeline": pipeline}}))
    out = root / "result.json"
    document = recommend.run(toys, out, bench_params)
    return {"document": document, "out": out, "workspace": root / "work", "toys": toys}


pytestmark = pytest.mark.slow


def test_figures_are_what_evaluate_measured(bench_run):
    written = json.loads(bench_run["out"].read_text())
    assert written == bench_run["document"] and written["dataset"] == "Toys"
    assert load_settings(bench_run["workspace"] / "params.yaml").ingest.source == "rechorus"
    evaluated = json.loads((bench_run["workspace"] / "metrics" / "evaluate.json").read_text())["recommend"]
    assert written["requests"] == evaluated["requests"] == N_USERS  # one test row per user
    assert set(written["methods"]) == {"popularity", "itemcf", "relations", "sasrec", "rrf", "weighted", "lambdarank"}
    for name, values in written["methods"].items():
        assert values["ndcg@10"] == evaluated[name]["ndcg@10"], name
        assert 0 <= values["ndcg@10"] <= values["hr@10"] <= 1
    assert list(written["stage_seconds"]) == ["ingest", "validate", "clean", "features", "finetune", "recall", "fuse",
                                              "evaluate"]
    # random order gives NDCG@10 about 0.13 among 31 candidates; the planted complement chains are learnable
    assert written["methods"]["relations"]["ndcg@10"] > 0.3, "the source's item relations reach the component"


def test_the_served_fusion_is_marked_with_its_features(bench_run):
    methods = bench_run["document"]["methods"]
    assert [name for name, values in methods.items() if values.get("shipped")] == ["lambdarank"]
    card = json.loads((bench_run["workspace"] / "models" / "fusion" / "recommend" / "lambdarank" / "lambdarank.json")
                      .read_text())
    assert methods["lambdarank"]["features"] == card["feature_names"] and "sasrec_score" in card["feature_names"]


def test_each_test_positive_is_ranked_among_exactly_its_given_negatives(bench_run):
    features = bench_run["workspace"] / "data" / "features"
    items = pd.read_parquet(features / "items.parquet")["item_id"].tolist()
    candidates = pd.read_parquet(features / "candidates.parquet")
    interactions = pd.read_parquet(features / "interactions.parquet")
    assert "event_id" not in interactions  # the source's event ids name the split
    source = pd.read_csv(bench_run["toys"] / "test.csv", sep="\t", dtype=str)
    given = Counter(tuple(sorted([row.item_id] + row.neg_items.strip("[]").replace(" ", "").split(",")))
                    for row in source.itertuples())
    test = candidates[candidates["split"] == "test"]
    assert Counter(tuple(sorted(items[i] for i in row)) for row in test["candidates"]) == given
    assert {len(row) for row in test["candidates"]} == {N_NEGATIVES + 1}
    first = [int(np.flatnonzero(row == item)[0]) for row, item in zip(test["candidates"], test["item"])]
    assert len(set(first)) > 5, "the positive sits in a seeded random slot, not first"
    assert (candidates["split"] == "valid").sum() == N_USERS  # the dev rows fit the fusions
    counts = interactions["split"].value_counts()
    assert counts["valid"] == counts["test"] == N_USERS
