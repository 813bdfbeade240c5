"""SASRec on the tiny embedded shop: each user's newest new item is held out by time."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.items import Request
from pipelines.models.rankers.popularity import Popularity
from pipelines.models.rankers.sasrec import SASRec, SASRecParams
from tests.conftest import params_section
from tests.model.test_popularity_itemcf import held_out_by_time, mean_ndcg, target_auc

SMALL = dict(hidden=32, layers=1, heads=2, inner=64, max_len=20, dropout=0.2, lr=3e-3, batch=32,
             epochs=12, patience=12, seed=7, device="cpu", checkpoint_dir=None)


def small(**changes) -> SASRecParams:
    return params_section("sasrec", **{**SMALL, **changes})


@pytest.fixture(scope="module")
def shop(tiny_run):
    return held_out_by_time(tiny_run["clean"])


@pytest.fixture(scope="module")
def trained(shop):
    _, train, _, _ = shop
    return SASRec(small()).fit(train)


def test_shapes_and_training_progress(shop, trained):
    items, _, requests, _ = shop
    assert trained.score_all(requests[:6]).shape == (6, len(items))
    assert trained.score(requests[:6], np.arange(15)).shape == (6, 15)
    top, scores = trained.retrieve(requests[:6], 10)
    assert top.shape == (6, 10) and np.all(np.diff(scores, axis=1) <= 0)
    losses = [epoch["loss"] for epoch in trained.history]
    assert len(losses) == SMALL["epochs"] and losses[-1] < losses[0]
    assert trained.throughput > 0


def test_better_than_random_and_popularity(shop, trained):
    _, train, requests, targets = shop
    popularity = Popularity(params_section("recall.popularity", half_life_days=None, event_weights={})).fit(train)
    assert target_auc(trained, requests, targets) > 0.6
    assert mean_ndcg(trained, requests, targets) > mean_ndcg(popularity, requests, targets)


def test_deterministic_with_seed(shop, trained):
    _, train, requests, _ = shop
    again = SASRec(small()).fit(train)
    np.testing.assert_array_equal(again.score_all(requests[:10]), trained.score_all(requests[:10]))


def test_cold_user_gets_popularity_and_unseen_item_is_scored(shop, trained):
    items, train, _, _ = shop
    counts = np.bincount(train.interactions["item"], minlength=len(items))
    cold = trained.score_all([Request(history=())])[0]
    assert np.argmax(cold) == np.argmax(counts)
    assert np.corrcoef(cold, counts)[0, 1] > 0.5
    unseen = np.setdiff1d(np.arange(len(items)), train.interactions["item"].unique())
    scores = trained.score_all([Request(history=(int(unseen[0]),)), Request(history=tuple(unseen[:3].tolist()))])
    assert np.all(np.isfinite(scores))


def test_save_load_round_trip(tmp_path, shop, trained):
    _, _, requests, _ = shop
    trained.save(tmp_path)
    again = SASRec.load(tmp_path)
    np.testing.assert_array_equal(again.score_all(requests[:10]), trained.score_all(requests[:10]))
    assert again.params == trained.params


def test_checkpoint_resume_continues(tmp_path, shop):
    _, train, requests, _ = shop
    uninterrupted = SASRec(small(epochs=3)).fit(train, checkpoint_dir=tmp_path / "straight")
    # "killed" after one epoch: the same run restarted with the full epoch budget
    first = SASRec(small(epochs=1)).fit(train, checkpoint_dir=tmp_path / "resumed")
    assert first.epochs_run == [1]
    resumed = SASRec(small(epochs=3)).fit(train, checkpoint_dir=tmp_path / "resumed")
    assert resumed.epochs_run == [2, 3]
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(resumed.score_all(requests[:8]), uninterrupted.score_all(requests[:8]), rtol=1e-5, atol=1e-5)
    # another configuration does not pick up that checkpoint
    other = SASRec(small(epochs=1, hidden=16)).fit(train, checkpoint_dir=tmp_path / "resumed")
    assert other.epochs_run == [1]


def test_sampled_softmax_trains(shop):
    _, train, _, _ = shop
    model = SASRec(small(loss="sampled", negatives=32, epochs=3)).fit(train)
    assert model.history[-1]["loss"] < model.history[0]["loss"]


def test_validation_fraction_holds_out_only_that_share_of_users(shop, monkeypatch):
    """Early stopping holds out the last training item of a seeded share of the users; the others train on all."""
    _, train, _, _ = shop
    seen = []
    monkeypatch.setattr(SASRec, "validation_ndcg", lambda self, validation: seen.append(list(validation)) or 0.0)
    SASRec(small(epochs=1)).fit(train)
    SASRec(small(epochs=1, validation_fraction=0.25)).fit(train)
    every, share = seen
    assert len(share) == round(len(every) * 0.25)
    assert {(request.history, item) for request, item in share} <= {(request.history, item) for request, item in every}
