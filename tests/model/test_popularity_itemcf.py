"""Popularity and item-CF on the tiny embedded shop: each user's newest new item is held out by time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.items import Items, Request, TrainingData
from pipelines.core.metrics import ndcg_at_k
from pipelines.models.rankers.itemcf import ItemCF
from pipelines.models.rankers.popularity import Popularity
from tests.conftest import params_section

K = 10


def held_out_by_time(clean_folder):
    """Train on each user's events before the first time they met their newest item; that item is the target."""
    items = Items.from_catalog(pd.read_parquet(clean_folder / "catalog.parquet"))
    events = pd.read_parquet(clean_folder / "events.parquet").sort_values(["user_id", "timestamp"], kind="stable")
    events = events[events["item_id"].isin(items.position)].copy()
    events["item"] = events["item_id"].map(items.position).astype(np.int64)
    firsts = events.drop_duplicates(["user_id", "item"])
    held = firsts.groupby("user_id").tail(1).set_index("user_id")["timestamp"]
    events = events[events["user_id"].map(firsts.groupby("user_id").size()) >= 3]
    before = events["timestamp"] < events["user_id"].map(held)
    train = events[before].rename(columns={"user_id": "user"})[["user", "item", "timestamp", "event_type"]]
    targets = firsts.groupby("user_id").tail(1).set_index("user_id")["item"]
    users = sorted(set(train["user"]))
    requests = [Request(history=tuple(train.loc[train["user"] == user, "item"].tolist()), user=user) for user in users]
    return items, TrainingData(items=items, interactions=train.reset_index(drop=True)), requests, targets[users].to_numpy()


def mean_ndcg(ranker, requests, targets) -> float:
    top, _ = ranker.retrieve(requests, K, exclude_history=True)
    return float(np.mean([ndcg_at_k(row.tolist(), {int(t): 1.0}, K) for row, t in zip(top, targets)]))


def target_auc(ranker, requests, targets) -> float:
    """Mean share of the other unseen items ranked below the target (ties count half); chance is 0.5."""
    scores = np.asarray(ranker.score_all(requests), dtype=float)
    shares = []
    for row, (request, target) in enumerate(zip(requests, targets)):
        others = np.delete(scores[row], list(set(request.history) | {int(target)}))
        shares.append(((others < scores[row, target]).sum() + 0.5 * (others == scores[row, target]).sum()) / len(others))
    return float(np.mean(shares))


@pytest.fixture(scope="module")
def shop(tiny_run):
    return held_out_by_time(tiny_run["clean"])


@pytest.fixture(scope="module")
def fitted(shop):
    _, train, _, _ = shop
    return Popularity(params_section("recall.popularity")).fit(train), ItemCF(params_section("recall.itemcf"), params_section("recall.popularity")).fit(train)


def test_no_target_in_training(shop):
    _, train, requests, targets = shop
    for request, target in zip(requests, targets):
        assert target not in request.history
    assert len(requests) > 50


def test_shapes(shop, fitted):
    items, _, requests, _ = shop
    candidates = np.arange(20)
    for ranker in fitted:
        assert ranker.score_all(requests[:7]).shape == (7, len(items))
        assert ranker.score(requests[:7], candidates).shape == (7, 20)
        top, scores = ranker.retrieve(requests[:7], K)
        assert top.shape == scores.shape == (7, K)
        assert np.all(np.diff(scores, axis=1) <= 0)


def test_score_matches_score_all(shop, fitted):
    _, _, requests, _ = shop
    candidates = np.random.default_rng(1).integers(0, 300, size=(5, 30))
    for ranker in fitted:
        full = ranker.score_all(requests[:5])
        np.testing.assert_allclose(ranker.score(requests[:5], candidates), np.take_along_axis(full, candidates, 1), rtol=1e-6)


def test_deterministic(shop):
    _, train, requests, _ = shop
    np.testing.assert_array_equal(ItemCF(params_section("recall.itemcf"), params_section("recall.popularity")).fit(train).score_all(requests[:10]), ItemCF(params_section("recall.itemcf"), params_section("recall.popularity")).fit(train).score_all(requests[:10]))
    np.testing.assert_array_equal(Popularity(params_section("recall.popularity")).fit(train).popularity, Popularity(params_section("recall.popularity")).fit(train).popularity)


def test_better_than_random_and_itemcf_beats_popularity(shop, fitted):
    _, _, requests, targets = shop
    popularity, itemcf = fitted
    assert target_auc(popularity, requests, targets) > 0.6
    assert target_auc(itemcf, requests, targets) > target_auc(popularity, requests, targets)
    assert mean_ndcg(itemcf, requests, targets) > 2 * mean_ndcg(popularity, requests, targets)


def test_event_weights_and_decay_change_counts(shop):
    _, train, _, _ = shop
    flat = Popularity(params_section("recall.popularity", half_life_days=None, event_weights={})).fit(train).popularity
    np.testing.assert_allclose(flat.sum(), len(train.interactions))
    weighted = Popularity(params_section("recall.popularity", half_life_days=None)).fit(train).popularity
    assert weighted.sum() > flat.sum()  # clicks, carts and purchases weigh more than a view
    decayed = Popularity(params_section("recall.popularity", half_life_days=1.0)).fit(train).popularity
    assert decayed.sum() < weighted.sum()


def test_cold_user_gets_popularity_and_cold_item_does_not_crash(shop, fitted):
    items, train, _, _ = shop
    popularity, itemcf = fitted
    cold_user = [Request(history=())]
    assert np.argmax(itemcf.score_all(cold_user)[0]) == np.argmax(popularity.popularity)
    top_popular, _ = popularity.retrieve(cold_user, K)
    top_itemcf, _ = itemcf.retrieve(cold_user, K)
    np.testing.assert_array_equal(np.sort(top_popular[0]), np.sort(top_itemcf[0]))
    unseen = np.setdiff1d(np.arange(len(items)), train.interactions["item"].unique())
    assert len(unseen) > 0
    scores = itemcf.score_all([Request(history=(int(unseen[0]),))])
    assert np.all(np.isfinite(scores))
    assert popularity.score(cold_user, unseen[:3]).tolist() == [[0.0, 0.0, 0.0]]


def test_window_restricts_cooccurrence(shop):
    _, train, _, _ = shop
    whole = ItemCF(params_section("recall.itemcf"), params_section("recall.popularity")).fit(train).similarity
    near = ItemCF(params_section("recall.itemcf", window=1), params_section("recall.popularity")).fit(train).similarity
    assert 0 < near.nnz < whole.nnz


def test_save_load_round_trip(tmp_path, shop, fitted):
    _, _, requests, _ = shop
    for ranker in fitted:
        ranker.save(tmp_path)
        again = type(ranker).load(tmp_path)
        np.testing.assert_array_equal(again.score_all(requests[:10]), ranker.score_all(requests[:10]))


def test_popularity_retrieve_reads_the_sorted_ranking_and_skips_history():
    from pipelines.core.items import Request
    from pipelines.models.rankers.base import Ranker
    from pipelines.models.rankers.popularity import Popularity

    model = Popularity(params_section("recall.popularity"))
    model.n_items = 6
    model.popularity = np.array([3.0, 9.0, 1.0, 9.0, 5.0, 0.0], dtype=np.float32)
    items, scores = model.retrieve([Request(), Request(history=(1, 4))], 3, exclude_history=True)
    assert items.tolist() == [[1, 3, 4], [3, 0, 2]]
    assert scores.tolist() == [[9.0, 9.0, 5.0], [9.0, 3.0, 1.0]]
    generic, _ = Ranker.retrieve(model, [Request(history=(1, 4))], 3, exclude_history=True)
    assert set(generic[0].tolist()) == set(items[1].tolist())  # the same items as the generic top-k
    everything, tail_scores = model.retrieve([Request(history=(0, 1, 2, 3, 4))], 3, exclude_history=True)
    assert everything[0].tolist() == [5, 1, 3] and np.isneginf(tail_scores[0][1:]).all()  # history only at the end
