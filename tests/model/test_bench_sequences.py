"""The sequences benchmark end to end on small synthetic <Name>.txt files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.bench import sequences as bench
from pipelines.core.config import Settings
from pipelines.models.rankers.itemcf import ItemCF
from pipelines.models.rankers.popularity import Popularity
from pipelines.models.rankers.sasrec import SASRec
from pipelines.ranking import fusion

N_ITEMS = 40
METHODS = {"popularity", "itemcf", "sasrec", "fusion_weighted", "fusion_rrf"}


def small_settings(tmp_path) -> Settings:
    return Settings.model_validate({
        "sasrec": {"hidden": 16, "layers": 1, "heads": 1, "inner": 32, "max_len": 10, "dropout": 0.1, "lr": 5e-3,
                   "batch": 16, "epochs": 4, "patience": 4, "device": "cpu",
                   "checkpoint_dir": str(tmp_path / "checkpoints")},
        "bench_sequences": {"candidates": 10, "ks": [10], "recall_k": 20},
        "fusion": {"folds": 2},
    })


def walk_file(tmp_path, users: int = 80, seed: int = 0):
    """Each user walks the item ring one step at a time from a random start: the next item is predictable."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(1, users + 1):
        start, length = rng.integers(1, N_ITEMS + 1), rng.integers(5, 9)
        lines.append(" ".join(map(str, [user, *((start + np.arange(length)) % N_ITEMS + 1)])))
    path = tmp_path / "Ring_Walk.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_end_to_end_json(tmp_path):
    out = tmp_path / "results" / "sequences.json"
    document = bench.run(walk_file(tmp_path), out, small_settings(tmp_path))
    assert json.loads(out.read_text(encoding="utf-8")) == document
    assert document["dataset"] == "Ring_Walk"
    assert "history items excluded" in document["protocol"]
    assert set(document["methods"]) == METHODS
    for values in document["methods"].values():
        assert 0.0 <= values["ndcg@10"] <= values["hr@10"] <= 1.0
    methods = document["methods"]
    assert methods["itemcf"]["ndcg@10"] > methods["popularity"]["ndcg@10"] + 0.2
    assert methods["fusion_weighted"]["kind"] == "fusion" and methods["sasrec"]["kind"] == "component"
    assert document["users"] == 80 and document["sasrec_sequences_per_second"] > 0
    assert abs(sum(document["fusion"]["weights"].values()) - 1.0) < 1e-6


@pytest.fixture
def spies(monkeypatch):
    """Record every item a model is fitted on or validated with, and every target the fusion is fitted to."""
    seen = {"trained": set(), "fusion_targets": set(), "histories": set()}

    def spy_fit(original):
        def fit(self, data, *args, **kwargs):
            seen["trained"].update(data.interactions["item"].tolist())
            for request, target in kwargs.get("validation") or []:
                seen["trained"].update([*request.history, target])
            return original(self, data, *args, **kwargs)
        return fit

    for ranker in (Popularity, ItemCF, SASRec):
        monkeypatch.setattr(ranker, "fit", spy_fit(ranker.fit))
    original_gains, original_scores = bench.target_gains, bench.candidate_scores

    def gains(candidates, targets):
        seen["fusion_targets"].update(targets.tolist())
        return original_gains(candidates, targets)

    def scores(components, requests, candidates):
        for request in requests:
            seen["histories"].update(request.history)
        return original_scores(components, requests, candidates)

    monkeypatch.setattr(bench, "target_gains", gains)
    monkeypatch.setattr(bench, "candidate_scores", scores)
    fits = []
    original_fusion_fit = fusion.WeightedFusion.fit
    monkeypatch.setattr(fusion.WeightedFusion, "fit", lambda self, *a, **k: fits.append(a) or original_fusion_fit(self, *a, **k))
    seen["fusion_fits"] = fits
    return seen


def test_test_items_never_reach_training_or_fusion_fitting(tmp_path, spies):
    """Every user's last item is one only that user has, so any leak shows up as that item being seen."""
    rng = np.random.default_rng(1)
    lines, last_ids = [], []
    for user in range(1, 61):
        body = rng.integers(1, N_ITEMS + 1, size=rng.integers(3, 7)).tolist()
        last_ids.append(1000 + user)
        lines.append(" ".join(map(str, [user, *body, 1000 + user])))
    path = tmp_path / "Unique_Last.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    items, _ = bench.load_sequences(path)
    test_positions = set(items.positions([str(i) for i in last_ids]).tolist())
    assert len(test_positions) == 60

    bench.run(path, None, small_settings(tmp_path))
    assert spies["trained"] and spies["fusion_targets"] and len(spies["fusion_fits"]) == 1
    assert not spies["trained"] & test_positions
    assert not spies["fusion_targets"] & test_positions
    assert not spies["histories"] & test_positions
