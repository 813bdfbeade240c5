"""Relations ranker: on the tiny shop (shared category / brand only) and on explicit relation lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.items import Items, Request, TrainingData
from pipelines.models.rankers.relations import Relations
from tests.conftest import params_section


@pytest.fixture(scope="module")
def shop(tiny_run):
    """Each user's newest item is the target; the history is what came before it."""
    clean = tiny_run["clean"]
    items = Items.from_catalog(pd.read_parquet(clean / "catalog.parquet"))
    events = pd.read_parquet(clean / "events.parquet").sort_values(["user_id", "timestamp"], kind="stable")
    events = events[events["item_id"].isin(items.position)]
    events = events.assign(item=events["item_id"].map(items.position).astype(np.int64))
    requests, targets = [], []
    for _, group in events.groupby("user_id"):
        sequence = group["item"].drop_duplicates(keep="last").tolist()
        if len(sequence) >= 3:
            requests.append(Request(history=tuple(sequence[:-1])))
            targets.append(sequence[-1])
    return items, requests, np.array(targets)


def _target_auc(scores: np.ndarray, requests, targets) -> float:
    """Share of the unseen items scored below the target (ties half); chance is 0.5."""
    shares = []
    for row, (request, target) in enumerate(zip(requests, targets)):
        others = np.delete(scores[row], list(set(request.history) | {int(target)}))
        shares.append(((others < scores[row, target]).sum() + 0.5 * (others == scores[row, target]).sum()) / len(others))
    return float(np.mean(shares))


def test_category_and_brand_beat_random_on_tiny_shop(shop):
    items, requests, targets = shop
    ranker = Relations(params_section("relations")).fit(TrainingData(items))
    assert set(ranker.kinds) == {"category", "brand"}  # the tiny shop has no relation lists
    scores = ranker.score_all(requests)
    assert scores.shape == (len(requests), len(items))
    assert _target_auc(scores, requests, targets) > 0.6


def test_score_matches_score_all_and_is_deterministic(shop):
    items, requests, _ = shop
    ranker = Relations(params_section("relations")).fit(TrainingData(items))
    candidates = np.random.default_rng(0).integers(0, len(items), (len(requests), 25))
    picked = np.take_along_axis(ranker.score_all(requests), candidates, axis=1)
    assert np.allclose(ranker.score(requests, candidates), picked)
    assert np.array_equal(Relations(params_section("relations")).fit(TrainingData(items)).score(requests, candidates),
                          ranker.score(requests, candidates))


def test_cold_start_scores_zero(shop):
    items, _, _ = shop
    ranker = Relations(params_section("relations")).fit(TrainingData(items))
    assert not ranker.score_all([Request(history=())]).any()


def _four_items() -> Items:
    return Items(ids=np.array(["a", "b", "c", "d"]), titles=list("abcd"), texts=list("abcd"),
                 categories=["", "", "", ""], brands=["", "", "", ""])


def test_explicit_lists_directions_and_recency():
    relations = pd.DataFrame({"item": [0, 0, 1], "related_item": [2, 3, 3],
                              "relation": ["complement", "substitute", "complement"]})
    params = params_section("relations", recency_decay=0.5, weights={"complement": 1.0, "substitute": 0.5, "complement_backward": 0.25})
    ranker = Relations(params).fit(TrainingData(_four_items(), relations=relations))
    assert set(ranker.kinds) == {"complement", "complement_backward", "substitute", "substitute_backward"}
    scores = ranker.score_all([Request(history=(1, 0))])[0]  # item 0 newest (weight 1), item 1 older (0.5)
    assert scores[2] == pytest.approx(1.0)  # complement of the newest item
    assert scores[3] == pytest.approx(0.5 + 0.5 * 1.0)  # substitute of 0, complement of the older 1
    assert scores[1] == pytest.approx(0.0)  # 1 lists nothing pointing back to 0 or to itself
    backward = ranker.score_all([Request(history=(2,))])[0]
    assert backward[0] == pytest.approx(0.25)  # 0 lists 2 as complement: seen from 2, backward
    kinds = ranker.kind_scores([Request(history=(1, 0))], np.array([[2, 3]]))
    assert kinds["substitute"][0].tolist() == [0.0, 1.0]


def test_history_window_limits_what_counts():
    relations = pd.DataFrame({"item": [0], "related_item": [2], "relation": ["complement"]})
    ranker = Relations(params_section("relations", history_items=1)).fit(TrainingData(_four_items(), relations=relations))
    assert ranker.score_all([Request(history=(0, 1))])[0, 2] == 0.0  # item 0 is outside the window
    assert ranker.score_all([Request(history=(1, 0))])[0, 2] > 0.0
