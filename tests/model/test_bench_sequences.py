"""The sequences benchmark on a tiny synthetic <Name>.txt file: it runs the dvc.yaml stages in a workspace (the
benchmark's own settings of benchmarks/params.yaml, budgets cut) with leave-one-out held out by the features
stage, and reports what evaluate measured there."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.bench import sequences as bench
from pipelines.bench.workspace import bench_settings

N_ITEMS, N_USERS = 40, 80
TINY_PIPELINE = {
    "finetune.device": "cpu", "text.dense.device": "cpu", "text.cross_encoder.device": "cpu",
    "ranking.candidates_per_component": 10,
    "sasrec.epochs": 3, "sasrec.hidden": 16, "sasrec.heads": 1, "sasrec.inner": 32, "sasrec.max_len": 10,
    "sasrec.batch": 16, "sasrec.lr": 0.005, "sasrec.dropout": 0.1, "sasrec.device": "cpu",
    "fusion.folds": 2, "fusion.weight_grid": [0, 0.5, 1, 2], "fusion.rounds": 1,
    "fusion.lambdarank": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 5, "cv_folds": 2},
}


def walk_file(folder, seed: int = 0):
    """Each user walks the item ring one step at a time from a random start: the next item is predictable."""
    rng = np.random.default_rng(seed)
    sequences = {}
    for user in range(1, N_USERS + 1):
        start, length = rng.integers(1, N_ITEMS + 1), rng.integers(5, 9)
        sequences[str(user)] = [str(item) for item in (start + np.arange(length)) % N_ITEMS + 1]
    path = folder / "Ring_Walk.txt"
    path.write_text("".join(f"{user} {' '.join(items)}\n" for user, items in sequences.items()), encoding="utf-8")
    return path, sequences


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    path, sequences = walk_file(root)
    pipeline = {**bench_settings("sequences")["pipeline"], **TINY_PIPELINE}  # the benchmark's own settings, cut
    bench_params = root / "bench.yaml"
    bench_params.write_text(yaml.safe_dump({"sequences": {"work_dir": str(root / "work_{dataset}"),
                                                          "pipeline": pipeline}}))
    out = root / "result.json"
    document = bench.run(path, out, bench_params)
    return {"document": document, "out": out, "workspace": root / "work_Ring_Walk", "sequences": sequences}


pytestmark = pytest.mark.slow


def test_figures_are_what_evaluate_measured(bench_run):
    written = json.loads(bench_run["out"].read_text(encoding="utf-8"))
    assert written == bench_run["document"] and written["dataset"] == "Ring_Walk"
    assert "history excluded" in written["protocol"]
    evaluated = json.loads((bench_run["workspace"] / "metrics" / "evaluate.json").read_text())["recommend"]
    assert written["requests"] == evaluated["requests"] == N_USERS
    assert set(written["methods"]) == {"popularity", "itemcf", "sasrec", "rrf", "weighted", "lambdarank"}
    for name, values in written["methods"].items():
        assert values["ndcg@10"] == evaluated[name]["ndcg@10"], name
        assert 0.0 <= values["ndcg@10"] <= values["hr@10"] <= 1.0
    methods = written["methods"]
    assert methods["itemcf"]["ndcg@10"] > methods["popularity"]["ndcg@10"] + 0.2
    assert list(written["stage_seconds"]) == ["ingest", "validate", "clean", "features", "finetune", "recall", "fuse",
                                              "evaluate"]


def test_the_served_fusion_is_marked_with_its_features(bench_run):
    methods = bench_run["document"]["methods"]
    folder = bench_run["workspace"] / "models" / "fusion" / "recommend"
    served = json.loads((folder / "served.json").read_text())
    assert [name for name, values in methods.items() if values.get("shipped")] == [served["method"]]
    assert bench_run["document"]["shipped"]["ndcg@10"] == methods[served["method"]]["ndcg@10"]
    if served["method"] == "weighted":
        assert methods["weighted"]["features"] == list(json.loads((folder / "weighted.json").read_text())["weights"])
    else:
        card = json.loads((folder / "lambdarank" / "lambdarank.json").read_text())
        assert methods["lambdarank"]["features"] == card["feature_names"]


def test_leave_one_out_targets_are_each_users_last_item(bench_run):
    features = bench_run["workspace"] / "data" / "features"
    items = pd.read_parquet(features / "items.parquet")["item_id"].tolist()
    interactions = pd.read_parquet(features / "interactions.parquet")
    assert not (features / "candidates.parquet").exists()  # full ranking: candidates pooled from the catalog
    held = {split: interactions[interactions["split"] == split] for split in ("valid", "test")}
    by_user = {user: [items[i] for i in group] for user, group in interactions.groupby("user", sort=False)["item"]}
    assert all(len(frame) == N_USERS and frame["user"].is_unique for frame in held.values())
    sequences = sorted(bench_run["sequences"].values())
    assert sorted(by_user.values()) == sequences  # each user's order kept (user ids are pseudonyms)
    for user, row in held["test"].set_index("user")["item"].items():
        assert items[row] == by_user[user][-1]
    for user, row in held["valid"].set_index("user")["item"].items():
        assert items[row] == by_user[user][-2]
