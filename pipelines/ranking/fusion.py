"""Fusing the scores of several rankers into one ranking.

Three ways, from the simplest:
- `rrf`: reciprocal rank fusion, nothing fitted (the baseline);
- `WeightedFusion`: non-negative weights of per-request normalized scores, fitted by coordinate
  ascent on mean NDCG@k, with k-fold cross-validation over the requests to report how well the
  chosen normalization and weights carry over to unseen requests;
- `LambdaRankFusion`: a LightGBM lambdarank model over any features of (request, candidate),
  early-stopped on a validation split carved from the training requests it is given.

Every fit takes training requests only: there is no argument through which a test row could enter.
Scores are arrays [n_requests, n_candidates]; gains have the same shape (graded or 0/1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipelines.core import metrics
from pipelines.core.logs import get_logger
from pipelines.core.params import FusionParams, LambdaRankParams, RelevanceParams

log = get_logger(__name__)

NORMALIZATIONS = ("zscore", "minmax", "rank")
LAMBDARANK_MODEL = "lambdarank.txt"
LAMBDARANK_CARD = "lambdarank.json"
RELEVANCE_MODEL = "relevance.txt"
RELEVANCE_CARD = "relevance.json"


# ---------------------------------------------------------------- normalization and ranking

def normalize_scores(scores: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Scores made comparable across components, row by row; non-finite values become the row's lowest."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; use one of {', '.join(NORMALIZATIONS)}")
    values = np.array(scores, dtype=np.float64, ndmin=2)
    finite = np.isfinite(values)
    if method != "rank" and values.size and finite.all():  # the serving path's case: plain (faster) row statistics
        centre = values.mean(axis=1, keepdims=True) if method == "zscore" else values.min(axis=1, keepdims=True)
        spread = values.std(axis=1, keepdims=True) if method == "zscore" else values.max(axis=1, keepdims=True) - centre
        return (values - centre) / np.where(spread > 0, spread, 1.0)
    masked = np.where(finite, values, np.nan)
    with np.errstate(all="ignore"):
        if method == "zscore":
            centre, spread = _row_stat(np.nanmean, masked), _row_stat(np.nanstd, masked)
        elif method == "minmax":
            centre = _row_stat(np.nanmin, masked)
            spread = _row_stat(np.nanmax, masked) - centre
        else:
            return _rank_percentile(values, finite)
        normalized = (masked - centre) / np.where(spread > 0, spread, 1.0)
    floor = _row_stat(np.nanmin, normalized)
    return np.where(finite, normalized, np.where(np.isfinite(floor), floor, 0.0))


def _row_stat(function, values: np.ndarray) -> np.ndarray:
    """A nan-aware row statistic as a column; rows with no finite value give nan (no warning)."""
    out = np.full((values.shape[0], 1), np.nan)
    filled = ~np.all(np.isnan(values), axis=1)
    if filled.any():
        out[filled, 0] = function(values[filled], axis=1)
    return out


def _rank_percentile(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Rank of each finite score in its row scaled to [0, 1] (ties share their mean rank); others 0."""
    from scipy.stats import rankdata

    out = np.zeros_like(values)
    for row in range(values.shape[0]):
        keep = finite[row]
        count = int(keep.sum())
        if count > 1:
            out[row, keep] = (rankdata(values[row, keep]) - 1) / (count - 1)
    return out


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every candidate in its row (best = 1; ties broken by position, stably)."""
    values = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-values, axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(1, values.shape[1] + 1)[None, :].repeat(len(values), 0), axis=1)
    return out


def rrf(component_scores: Mapping[str, np.ndarray], k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion: sum over components of 1 / (k + rank)."""
    return sum(1.0 / (k + ranks(np.asarray(s, dtype=np.float64))) for s in component_scores.values())


def mean_ndcg(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of the rankings `scores` induce, computed with pipelines.core.metrics."""
    return float(np.mean(ndcg_per_request(scores, gains, k))) if len(scores) else 0.0


def ndcg_per_request(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> np.ndarray:
    values = np.where(np.isfinite(scores), scores, -np.inf)
    top_gains = np.take_along_axis(gains, top_k_positions(values, k), axis=1)
    out = np.zeros(len(values))
    # NDCG depends only on the gains met in the top k and on the request's ideal list, so each such
    # pattern is computed once with metrics; a request whose top k holds no gain scores 0.
    cache: dict[tuple, float] = {}
    for row in np.flatnonzero((top_gains > 0).any(axis=1)):
        positives = gains[row][gains[row] > 0]
        pattern = (tuple(top_gains[row].tolist()), tuple(np.sort(positives).tolist()))
        if pattern not in cache:
            cache[pattern] = _pattern_ndcg(*pattern, k)
        out[row] = cache[pattern]
    return out


def _pattern_ndcg(top_gains: tuple[float, ...], positive_gains: tuple[float, ...], k: int) -> float:
    judged: dict[object, float] = {position: gain for position, gain in enumerate(top_gains) if gain > 0}
    unretrieved = list(positive_gains)
    for gain in judged.values():
        unretrieved.remove(gain)
    judged.update({("below top k", index): gain for index, gain in enumerate(unretrieved)})
    return metrics.ndcg_at_k(list(range(len(top_gains))), judged, k)


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Candidate positions of the k best scores of each row, best first (ties: lower position first)."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        # only the k best need sorting: the k-th best score by a partition, then every score above it and
        # the lowest positions of those equal to it (a partition alone picks among ties at the cut arbitrarily)
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
        above, equal = scores > kth, scores == kth
        chosen = above | (equal & (np.cumsum(equal, axis=1) <= k - above.sum(axis=1, keepdims=True)))
        part = np.nonzero(chosen)[1].reshape(len(scores), k)
        inner = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, inner, axis=1)
    return np.argsort(-scores, axis=1, kind="stable")


# ---------------------------------------------------------------- weighted fusion

class WeightedFusion:
    """score = sum_c weight_c * normalize(score_c); weights >= 0 fitted to maximize NDCG@k."""

    def __init__(self, normalizations: Sequence[str] = NORMALIZATIONS, weight_grid: Sequence[float] = (0, .1, .25, .5, 1, 2, 4),
                 rounds: int = 2):
        self.normalizations = list(normalizations)
        self.weight_grid = sorted(set(float(w) for w in weight_grid) | {0.0})
        self.rounds = rounds
        self.normalization = self.normalizations[0]
        self.weights: dict[str, float] = {}
        self.cv: dict[str, list[float]] = {}
        self.metric_k = 10

    @classmethod
    def from_params(cls, params: FusionParams) -> "WeightedFusion":
        return cls(params.normalizations, params.weight_grid, params.rounds)

    def fit(self, component_scores: Mapping[str, np.ndarray], gains: np.ndarray, folds: int = 5, seed: int = 0,
            metric_k: int = 10) -> "WeightedFusion":
        names = sorted(component_scores)
        gains = np.asarray(gains, dtype=np.float64)
        self.metric_k = metric_k
        fold_of = np.random.default_rng(seed).permutation(len(gains)) % folds
        self.cv = {}
        for method in self.normalizations:
            stacked = np.stack([normalize_scores(component_scores[name], method) for name in names])
            self.cv[method] = [
                mean_ndcg(_combine(stacked[:, fold_of == fold], self._search(stacked[:, fold_of != fold],
                                                                             gains[fold_of != fold])),
                          gains[fold_of == fold], metric_k)
                for fold in range(folds)
            ]
        self.normalization = max(self.normalizations, key=lambda method: np.mean(self.cv[method]))
        stacked = np.stack([normalize_scores(component_scores[name], self.normalization) for name in names])
        found = self._search(stacked, gains)
        self.weights = {name: float(weight) for name, weight in zip(names, found)}
        log.info("weighted fusion fitted", extra={"normalization": self.normalization, "weights": self.weights,
                                                  "cv_ndcg": round(float(np.mean(self.cv[self.normalization])), 4)})
        return self

    @property
    def cv_ndcg(self) -> float | None:
        """Mean NDCG@metric_k of the held-out folds with the chosen normalization (None before a fit)."""
        return float(np.mean(self.cv[self.normalization])) if self.cv.get(self.normalization) else None

    def _search(self, stacked: np.ndarray, gains: np.ndarray) -> np.ndarray:
        """Coordinate ascent over the grid, from equal weights; result scaled to sum 1."""
        weights = np.ones(len(stacked))
        best = mean_ndcg(_combine(stacked, weights), gains, self.metric_k)
        for _ in range(self.rounds):
            improved = False
            for component in range(len(stacked)):
                for value in self.weight_grid:
                    if value == weights[component]:
                        continue
                    trial = weights.copy()
                    trial[component] = value
                    if not trial.any():
                        continue
                    quality = mean_ndcg(_combine(stacked, trial), gains, self.metric_k)
                    if quality > best + 1e-9:
                        best, weights, improved = quality, trial, True
            if not improved:
                break
        return weights / weights.sum()

    def parts(self, component_scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """weight x normalized score of each weighted component present: the fused score is their sum
        (a served explanation shows them)."""
        if not self.weights:
            raise RuntimeError("WeightedFusion used before fit")
        missing = [name for name, weight in self.weights.items() if weight > 0 and name not in component_scores]
        if missing:
            raise KeyError(f"component scores missing: {', '.join(missing)}")
        return {name: weight * normalize_scores(component_scores[name], self.normalization)
                for name, weight in self.weights.items() if name in component_scores}

    def score(self, component_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        return sum(self.parts(component_scores).values())

    def to_dict(self) -> dict:
        return {
            "kind": "weighted",
            "components": sorted(self.weights),
            "normalization": self.normalization,
            "weights": dict(self.weights),
            "metric": f"ndcg@{self.metric_k}",
            "cv_folds": {method: [round(v, 6) for v in values] for method, values in self.cv.items()},
            "cv_mean": {method: round(float(np.mean(values)), 6) for method, values in self.cv.items()},
            "search": {"normalizations": self.normalizations, "weight_grid": self.weight_grid, "rounds": self.rounds},
        }

    @classmethod
    def from_dict(cls, document: Mapping) -> "WeightedFusion":
        search = document.get("search", {})
        fusion = cls(search.get("normalizations", NORMALIZATIONS), search.get("weight_grid", (0, 1)),
                     search.get("rounds", 2))
        fusion.normalization = document["normalization"]
        fusion.weights = {name: float(weight) for name, weight in document["weights"].items()}
        fusion.cv = {method: list(values) for method, values in document.get("cv_folds", {}).items()}
        fusion.metric_k = int(str(document.get("metric", "ndcg@10")).split("@")[-1])
        return fusion


def _combine(stacked: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, stacked, axes=1)


# ---------------------------------------------------------------- learned ranker

class LambdaRankFusion:
    """LightGBM lambdarank over per-candidate features; every request is one query group."""

    def __init__(self, params: LambdaRankParams, metric_k: int):
        self.params = params
        self.metric_k = metric_k
        self.feature_names: list[str] = []
        self.booster = None
        self.best_iteration = 0
        self.valid_ndcg: float | None = None
        # mean NDCG@metric_k (pipelines.core.metrics, as the weighted fusion's cv) of the held-out folds at
        # best_iteration: what the fuse stage compares the two fusions by
        self.cv_ndcg: float | None = None

    def fit(self, features: np.ndarray, feature_names: Sequence[str], gains: np.ndarray,
            seed: int = 0) -> "LambdaRankFusion":
        """features [requests, candidates, features]; gains [requests, candidates].

        How many trees: the count with the best mean NDCG@metric_k over `cv_folds` held-out folds of the
        requests (of a seeded sample of `cv_max_requests` when there are more; at most n_estimators), then one
        fit on every request with that many. (One early-stopping
        carve of a fifth of the requests stopped the Home Depot stack at 5 trees: its curve is that noisy.)"""
        features = np.asarray(features, dtype=np.float32)
        n_requests, n_candidates, n_features = features.shape
        if len(feature_names) != n_features:
            raise ValueError(f"{len(feature_names)} feature names for {n_features} features")
        self.feature_names = list(feature_names)
        labels, label_gain = self._labels(np.asarray(gains, dtype=np.float64))
        folds = min(self.params.cv_folds, n_requests)
        trees = self.params.n_estimators
        if folds >= 2:
            rng = np.random.default_rng(seed)
            assignment = rng.permutation(n_requests) % folds
            if n_requests > self.params.cv_max_requests:  # the curves' peak, not the final fit, needs fewer requests
                assignment = np.full(n_requests, -1)
                sample = rng.choice(n_requests, self.params.cv_max_requests, replace=False)
                assignment[sample] = np.arange(len(sample)) % folds
            fits = [self._held_out_curve(features, labels, label_gain, assignment >= 0, assignment != fold, seed)
                    for fold in range(folds)]
            mean_curve = np.mean([curve for curve, _ in fits], axis=0)
            trees = int(np.argmax(mean_curve)) + 1
            self.valid_ndcg = float(mean_curve[trees - 1])
            self.cv_ndcg = float(np.mean([
                mean_ndcg(self._predict(booster, features[assignment == fold], trees),
                          np.asarray(gains, dtype=np.float64)[assignment == fold], self.metric_k)
                for fold, (_, booster) in enumerate(fits)]))
        self.booster = self._train(features, labels, label_gain, np.ones(n_requests, dtype=bool), trees, seed)
        self.best_iteration = trees
        log.info("lambdarank fitted", extra={"requests": n_requests, "cv_folds": folds, "trees": trees,
                                             "cv_ndcg": None if self.cv_ndcg is None else round(self.cv_ndcg, 4)})
        return self

    def _train(self, features: np.ndarray, labels: np.ndarray, label_gain: list[float], rows: np.ndarray,
               trees: int, seed: int, held_out: np.ndarray | None = None, record: dict | None = None):
        import lightgbm as lgb

        n_requests, n_candidates, n_features = features.shape
        p = self.params
        config = {"objective": "lambdarank", "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
                  "min_child_samples": p.min_child_samples, "feature_fraction": p.feature_fraction,
                  "bagging_fraction": p.bagging_fraction, "bagging_freq": p.bagging_freq, "lambda_l2": p.lambda_l2,
                  "label_gain": label_gain, "lambdarank_truncation_level": max(self.metric_k, 20),
                  "metric": "ndcg", "eval_at": [self.metric_k], "seed": seed, "num_threads": p.n_jobs,
                  "verbosity": -1, "deterministic": True, "force_col_wise": True}

        def dataset(mask: np.ndarray, reference=None):
            return lgb.Dataset(features[mask].reshape(-1, n_features), labels[mask].ravel(),
                               group=[n_candidates] * int(mask.sum()), feature_name=self.feature_names,
                               reference=reference, free_raw_data=False)

        train = dataset(rows)
        valid_sets = [dataset(held_out, train)] if held_out is not None else []
        callbacks = [lgb.record_evaluation(record)] if record is not None else []
        return lgb.train(config, train, num_boost_round=trees, valid_sets=valid_sets, valid_names=["held_out"][:len(valid_sets)],
                         callbacks=callbacks)

    def _held_out_curve(self, features, labels, label_gain, sampled: np.ndarray, fit_on: np.ndarray,
                        seed: int) -> tuple[np.ndarray, object]:
        """NDCG@metric_k of the sampled requests outside `fit_on` after each tree of a fit on the sampled ones in
        it (LightGBM's NDCG: the same gains; a request without any gain counts 1, which moves the curve, not
        where it peaks), and that fit."""
        record: dict = {}
        booster = self._train(features, labels, label_gain, sampled & fit_on, self.params.n_estimators, seed,
                              held_out=sampled & ~fit_on, record=record)
        return np.asarray(record["held_out"][f"ndcg@{self.metric_k}"], dtype=np.float64), booster

    def _labels(self, gains: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Integer labels for LightGBM; label_gain maps them back to the linear gains metrics uses."""
        resolution = self.params.label_resolution
        labels = np.rint(np.clip(gains, 0, None) * resolution).astype(np.int32)
        top_level = int(labels.max()) if labels.size else 0
        return labels, [level / resolution for level in range(top_level + 1)]

    def score(self, features: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("LambdaRankFusion.score before fit")
        return self._predict(self.booster, features, self.best_iteration)

    @staticmethod
    def _predict(booster, features: np.ndarray, trees: int) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        n_requests, n_candidates, n_features = features.shape
        return booster.predict(features.reshape(-1, n_features), num_iteration=trees).reshape(n_requests, n_candidates)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain of each feature, largest first."""
        gains = self.booster.feature_importance(importance_type="gain", iteration=self.best_iteration)
        pairs = sorted(zip(self.feature_names, gains), key=lambda pair: -pair[1])
        return {name: round(float(value), 4) for name, value in pairs}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / LAMBDARANK_MODEL), num_iteration=self.best_iteration)
        card = {
            "kind": "lambdarank", "model_file": LAMBDARANK_MODEL, "feature_names": self.feature_names,
            "feature_importance_gain": self.feature_importance(), "best_iteration": self.best_iteration,
            "metric": f"ndcg@{self.metric_k}", "valid_ndcg": self.valid_ndcg,  # LightGBM's CV mean at best_iteration
            "cv_ndcg": self.cv_ndcg,
            "params": self.params.model_dump(),
        }
        (folder / LAMBDARANK_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "LambdaRankFusion":
        import lightgbm as lgb

        folder = Path(folder)
        card = json.loads((folder / LAMBDARANK_CARD).read_text(encoding="utf-8"))
        fusion = cls(LambdaRankParams.model_validate(card["params"]), int(card["metric"].split("@")[-1]))
        fusion.feature_names = list(card["feature_names"])
        fusion.booster = lgb.Booster(model_file=str(folder / card["model_file"]))
        fusion.best_iteration = fusion.booster.current_iteration()
        fusion.valid_ndcg = card.get("valid_ndcg")
        fusion.cv_ndcg = card.get("cv_ndcg")
        return fusion


# ---------------------------------------------------------------- graded relevance

class RelevanceModel:
    """A LightGBM regressor of a judged pair's graded relevance from the stack's features of the pair.

    Where LambdaRank only orders a list, this predicts the grade itself (the relevance a shop's raters
    would give), clipped to the grades it was trained on.
    """

    def __init__(self, params: RelevanceParams):
        self.params = params
        self.feature_names: list[str] = []
        self.booster = None
        self.grades = (0.0, 1.0)
        self.mean_grade = 0.5  # of the pairs it learned from: what a model that knows nothing would predict

    def fit(self, features: np.ndarray, feature_names: Sequence[str], relevance: np.ndarray,
            seed: int = 0) -> "RelevanceModel":
        import lightgbm as lgb

        p = self.params
        model = lgb.LGBMRegressor(n_estimators=p.n_estimators, learning_rate=p.learning_rate, num_leaves=p.num_leaves,
                                  min_child_samples=p.min_child_samples, colsample_bytree=p.feature_fraction,
                                  subsample=p.bagging_fraction, subsample_freq=1, reg_lambda=p.lambda_l2,
                                  random_state=seed, n_jobs=p.n_jobs, verbose=-1)
        model.fit(np.asarray(features, dtype=np.float32), np.asarray(relevance, dtype=np.float64),
                  feature_name=list(feature_names))
        self.booster, self.feature_names = model.booster_, list(feature_names)
        self.grades = (float(np.min(relevance)), float(np.max(relevance)))
        self.mean_grade = float(np.mean(relevance))
        log.info("relevance model fitted", extra={"pairs": len(relevance), "features": len(self.feature_names)})
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("RelevanceModel.predict before fit")
        return np.clip(self.booster.predict(np.asarray(features, dtype=np.float32)), *self.grades)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / RELEVANCE_MODEL))
        card = {"kind": "relevance", "model_file": RELEVANCE_MODEL, "feature_names": self.feature_names,
                "grades": list(self.grades), "mean_grade": self.mean_grade, "params": self.params.model_dump()}
        (folder / RELEVANCE_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "RelevanceModel":
        import lightgbm as lgb

        card = json.loads((Path(folder) / RELEVANCE_CARD).read_text(encoding="utf-8"))
        model = cls(RelevanceParams.model_validate(card["params"]))
        model.feature_names, model.grades = list(card["feature_names"]), tuple(card["grades"])
        model.mean_grade = card["mean_grade"]
        model.booster = lgb.Booster(model_file=str(Path(folder) / card["model_file"]))
        return model
