"""The recommendation benchmark end to end on a tiny synthetic folder in the ReChorus layout ("Toys")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.bench import recommend
from pipelines.core.config import Settings

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


def tiny_settings(components: list[str]) -> Settings:
    return Settings.model_validate({
        "bench_recommend": {"components": components, "rrf_components": components, "seed": 0},
        "fusion": {"folds": 2, "normalizations": ["zscore", "rank"], "weight_grid": [0, 0.5, 1, 2], "rounds": 1,
                   "lambdarank": {"n_estimators": 60, "num_leaves": 7, "min_child_samples": 5,
                                  "early_stopping_rounds": 10}},
        "sasrec": {"epochs": 2, "hidden": 16, "heads": 1, "inner": 32, "max_len": 10, "batch": 64,
                   "device": "cpu", "checkpoint_dir": None},
    })


def test_bench_runs_end_to_end_on_any_folder_of_the_layout(tmp_path):
    toys = write_toys(tmp_path / "Toys")
    components = ["popularity", "itemcf", "relations", "dense", "sasrec"]
    out = tmp_path / "result.json"
    document = recommend.run(toys, out, tiny_settings(components))
    assert json.loads(out.read_text()) == document
    assert document["dataset"] == "Toys"
    assert document["requests"] == {"fusion_train": 2 * N_USERS, "test": N_USERS}  # dev rows + last train items
    assert document["candidates_per_request"] == N_NEGATIVES + 1
    assert set(document["methods"]) == set(components) | {"rrf", "weighted", "lambdarank"}
    for values in document["methods"].values():
        assert 0 <= values["ndcg@10"] <= values["hr@10"] <= 1
        assert 0 < values["coverage@10"] <= 1 and 0 <= values["popularity_bias"] <= 1
    # random order would give NDCG@10 about 0.13 with 31 candidates; the planted chains are learnable
    assert document["methods"]["lambdarank"]["ndcg@10"] > 0.3
    assert set(document["weighted_fusion"]["weights"]) == set(components)
    assert "rel_complement" in document["lambdarank"]["feature_importance_gain"]


def test_test_rows_never_reach_fitting(tmp_path):
    toys = write_toys(tmp_path / "Toys", fresh_test_items=True)
    settings = tiny_settings(["popularity", "itemcf", "relations"])
    dataset = recommend.load(toys, tmp_path / "converted")
    params = recommend.RecommendBenchParams.model_validate(settings.model_extra["bench_recommend"])
    fresh = {dataset.items.position[str(i)] for i in FRESH_TEST_ITEMS}
    with recommend._progress() as progress:
        fit_phase, test_phase, _ = recommend.build_phases(dataset, settings, params, tmp_path, progress)

    assert fresh.isdisjoint(fit_phase.interactions["item"]) and fresh.isdisjoint(test_phase.interactions["item"])
    assert all(fresh.isdisjoint(request.history) for request in fit_phase.requests + test_phase.requests)
    fit_positives = set(fit_phase.candidates[fit_phase.gains > 0].tolist())
    assert fresh.isdisjoint(fit_positives)
    test_positives = set(test_phase.candidates[test_phase.gains > 0].tolist())
    assert test_positives <= fresh  # the planted test rows are the ones scored, and only there
