"""Fusion on synthetic scores whose right answer is known."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from pipelines.core import metrics
from pipelines.ranking.fusion import (
    LambdaRankFusion,
    WeightedFusion,
    mean_ndcg,
    normalize_scores,
    ranks,
    rrf,
)
from tests.conftest import params_section

N_REQUESTS, N_CANDIDATES = 600, 30


@pytest.fixture(scope="module")
def planted():
    """One positive per request; `signal` sees it, `noise` does not, `weak` sees it faintly."""
    rng = np.random.default_rng(7)
    gains = np.zeros((N_REQUESTS, N_CANDIDATES))
    gains[np.arange(N_REQUESTS), rng.integers(0, N_CANDIDATES, N_REQUESTS)] = 1.0
    scores = {
        "signal": 1.5 * gains + rng.normal(0, 1, gains.shape),
        "weak": 0.6 * gains + rng.normal(0, 1, gains.shape) * 50 + 1000,  # another scale entirely
        "noise": rng.normal(0, 1, gains.shape),
    }
    return scores, gains


def test_normalize_scores_rows_and_non_finite():
    scores = np.array([[1.0, 2.0, 3.0, np.nan], [5.0, 5.0, 5.0, 5.0], [np.inf, -np.inf, np.nan, np.nan]])
    for method in ("zscore", "minmax", "rank"):
        out = normalize_scores(scores, method)
        assert out.shape == scores.shape and np.isfinite(out).all(), method
        assert out[0, 0] < out[0, 1] < out[0, 2], method  # order kept within the row
        assert out[0, 3] <= out[0, 0], method  # missing scores rank last
        assert np.ptp(out[1]) == 0, method  # a constant row carries no preference
    assert np.allclose(normalize_scores(scores, "minmax")[0, :3], [0, 0.5, 1])
    with pytest.raises(ValueError):
        normalize_scores(scores, "softmax")


def test_rrf_hand_example():
    a = np.array([[3.0, 2.0, 1.0]])  # ranks 1, 2, 3
    b = np.array([[1.0, 3.0, 2.0]])  # ranks 3, 1, 2
    fused = rrf({"a": a, "b": b}, k=1)
    assert np.allclose(fused, [[1 / 2 + 1 / 4, 1 / 3 + 1 / 2, 1 / 4 + 1 / 3]])
    assert list(ranks(fused)[0]) == [2, 1, 3]


def test_mean_ndcg_matches_metrics_on_graded_gains():
    rng = np.random.default_rng(3)
    gains = rng.integers(0, 4, (50, 12)) * rng.random((50, 12)).round(2)
    scores = gains + rng.normal(0, 1, gains.shape)
    expected = np.mean([metrics.ndcg_at_k(list(np.argsort(-scores[r], kind="stable")),
                                          dict(enumerate(gains[r])), 5) for r in range(50)])
    assert mean_ndcg(scores, gains, 5) == pytest.approx(expected)


def test_weighted_fusion_ignores_noise_and_beats_best_single(planted):
    scores, gains = planted
    fusion = WeightedFusion(weight_grid=(0, 0.25, 0.5, 1, 2, 4)).fit(scores, gains, folds=3, seed=0)
    assert fusion.weights["noise"] <= 0.1
    assert fusion.weights["signal"] >= 10 * fusion.weights["noise"]
    best_single = max(mean_ndcg(s, gains) for s in scores.values())
    assert mean_ndcg(fusion.score(scores), gains) >= best_single
    assert set(fusion.cv) == {"zscore", "minmax", "rank"} and all(len(v) == 3 for v in fusion.cv.values())


def test_weighted_fusion_dict_round_trip(planted):
    scores, gains = planted
    fusion = WeightedFusion(normalizations=("zscore",)).fit(scores, gains, folds=2)
    document = json.loads(json.dumps(fusion.to_dict()))
    assert document["components"] == ["noise", "signal", "weak"] and "cv_folds" in document
    assert np.allclose(WeightedFusion.from_dict(document).score(scores), fusion.score(scores))


def test_fits_take_training_rows_only(planted):
    """No fitting API has a slot for test rows, and rows outside the training part change nothing."""
    for method in (WeightedFusion.fit, LambdaRankFusion.fit):
        assert not {"test", "test_scores", "eval_set"} & set(inspect.signature(method).parameters)
    scores, gains = planted
    altered = {name: np.vstack([s[:400], s[400:][::-1] * 3 + 7]) for name, s in scores.items()}
    weights = [WeightedFusion(normalizations=("zscore",)).fit({n: s[:400] for n, s in table.items()},
                                                               gains[:400], folds=2).weights
               for table in (scores, altered)]
    assert weights[0] == weights[1]


def _planted_rule(n_requests: int, seed: int):
    """Relevant when feature 0 > 0.5 and feature 1 < 0.3 (an interaction no single feature captures)."""
    rng = np.random.default_rng(seed)
    features = rng.random((n_requests, 20, 3))
    gains = ((features[..., 0] > 0.5) & (features[..., 1] < 0.3)).astype(float)
    return features, gains


def test_lambdarank_learns_planted_rule_and_round_trips(tmp_path):
    features, gains = _planted_rule(300, seed=1)
    params = params_section("fusion.lambdarank", n_estimators=150, num_leaves=7, min_child_samples=5, cv_folds=3)
    fusion = LambdaRankFusion(params, metric_k=10).fit(features, ["f0", "f1", "noise"], gains, seed=0)
    test_features, test_gains = _planted_rule(200, seed=2)
    learned = mean_ndcg(fusion.score(test_features), test_gains)
    assert learned > 0.95
    assert learned > mean_ndcg(test_features[..., 0], test_gains) + 0.1
    importance = fusion.feature_importance()
    assert importance["noise"] < min(importance["f0"], importance["f1"])
    # the held-out folds' NDCG by our metric (the one the weighted fusion's CV uses): a learnable rule scores high
    assert 0.9 < fusion.cv_ndcg <= 1.0

    fusion.save(tmp_path)
    card = json.loads((tmp_path / "lambdarank.json").read_text())
    assert card["feature_names"] == ["f0", "f1", "noise"] and card["cv_ndcg"] == fusion.cv_ndcg
    assert np.array_equal(LambdaRankFusion.load(tmp_path).score(test_features), fusion.score(test_features))


def test_lambdarank_cross_validates_on_a_sample_of_many_requests(monkeypatch):
    """Above cv_max_requests the folds come from a seeded sample of that many requests; the final fit uses all."""
    features, gains = _planted_rule(300, seed=1)
    params = params_section("fusion.lambdarank", n_estimators=40, num_leaves=7, min_child_samples=5, cv_folds=3,
                            cv_max_requests=90)
    fitted_sizes = []
    original = LambdaRankFusion._train

    def counting(self, features, labels, label_gain, rows, trees, seed, held_out=None, record=None):
        fitted_sizes.append((int(rows.sum()), None if held_out is None else int(held_out.sum())))
        return original(self, features, labels, label_gain, rows, trees, seed, held_out=held_out, record=record)

    monkeypatch.setattr(LambdaRankFusion, "_train", counting)
    fusion = LambdaRankFusion(params, metric_k=10).fit(features, ["f0", "f1", "noise"], gains, seed=0)
    assert fitted_sizes == [(60, 30)] * 3 + [(300, None)]  # 3 folds of the 90 sampled, then all 300
    assert 1 <= fusion.best_iteration <= 40 and fusion.booster.num_trees() == fusion.best_iteration


def test_lambdarank_graded_gains():
    rng = np.random.default_rng(4)
    features = rng.random((200, 10, 2))
    gains = np.round(features[..., 0] * 3, 2)  # graded like 2.33
    fusion = LambdaRankFusion(params_section("fusion.lambdarank", n_estimators=80, min_child_samples=5), metric_k=10).fit(
        features, ["grade", "noise"], gains, seed=0)
    assert mean_ndcg(fusion.score(features), gains) > mean_ndcg(features[..., 1], gains)


def test_lambdarank_cv_ndcg_counts_a_request_without_gain_as_zero():
    """LightGBM's NDCG counts a request with no gain among its candidates as 1; cv_ndcg counts it 0, as the
    weighted fusion's CV does, so the fuse stage compares the two fusions on one scale."""
    features, gains = _planted_rule(300, seed=1)
    gains[::2] = 0.0  # half the requests have no relevant candidate
    params = params_section("fusion.lambdarank", n_estimators=60, num_leaves=7, min_child_samples=5, cv_folds=3)
    fusion = LambdaRankFusion(params, metric_k=10).fit(features, ["f0", "f1", "noise"], gains, seed=0)
    assert fusion.valid_ndcg > 0.9  # LightGBM's: the empty half counts 1
    assert 0.4 < fusion.cv_ndcg < 0.55  # ours: the empty half counts 0


def test_the_served_fusion_is_the_configured_one_or_the_better_cross_validated_one():
    from pipelines.ranking.tasks import choose_served

    assert choose_served("weighted", {"weighted": 0.1, "lambdarank": 0.5}) == "weighted"
    assert choose_served("lambdarank", {"weighted": 0.5, "lambdarank": 0.1}) == "lambdarank"
    assert choose_served("auto", {"weighted": 0.31, "lambdarank": 0.30}) == "weighted"
    assert choose_served("auto", {"weighted": 0.30, "lambdarank": 0.31}) == "lambdarank"
    assert choose_served("auto", {"weighted": 0.30, "lambdarank": 0.30}) == "lambdarank"
    assert choose_served("auto", {"weighted": 0.30, "lambdarank": None}) == "lambdarank"  # too few requests to fold
