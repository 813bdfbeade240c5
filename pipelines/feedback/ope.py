"""Off-policy estimates of a target policy's value from logged slates: IPS, SNIPS, doubly robust.

Slates use the position-based decomposition: the value of a slate is the sum of its slots' rewards,
and slot s's reward depends only on the context, the slot and the item there. Then, with
w[i, s] = pi(a_is at s | x_i) / mu(a_is at s | x_i) the ratio of the target's and the logger's
marginal slot propensities,

    IPS   = mean_i sum_s w_is r_is
    SNIPS = sum_s (sum_i w_is r_is / sum_i w_is)                (each slot self-normalized)
    DR    = mean_i [ direct_i + sum_s w_is (r_is - q_is) ]      (direct_i = sum_s sum_a pi(a at s) q(x_i, a, s))

A single-action bandit is the one-slot case. Intervals: normal approximation over impressions (the
delta method for SNIPS's ratios) or a percentile bootstrap over impressions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    std_error: float

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.low, self.high], "std_error": self.std_error}


def importance_weights(target_propensities: np.ndarray, logging_propensities: np.ndarray) -> np.ndarray:
    target = np.atleast_2d(np.asarray(target_propensities, dtype=np.float64))
    logging = np.atleast_2d(np.asarray(logging_propensities, dtype=np.float64))
    if np.any(logging <= 0):
        raise ValueError("logging propensities must be positive for every logged slot")
    return target / logging


def _normal(value: float, std_error: float, level: float) -> Estimate:
    half = norm.ppf(0.5 + level / 2) * std_error
    return Estimate(float(value), float(value - half), float(value + half), float(std_error))


def _column(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _bootstrap(statistic, arrays: tuple[np.ndarray, ...], value: float, rounds: int, level: float,
               seed: int) -> Estimate:
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    replicas = np.array([statistic(*(a[rows] for a in arrays)) for rows in
                         (rng.integers(0, n, n) for _ in range(rounds))])
    low, high = np.quantile(replicas, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(float(value), float(low), float(high), float(replicas.std(ddof=1)))


def _ips_value(rewards, weights) -> float:
    return float((weights * rewards).sum(axis=1).mean())


def _snips_value(rewards, weights) -> float:
    totals = weights.sum(axis=0)
    return float(np.sum(np.where(totals > 0, (weights * rewards).sum(axis=0) / np.where(totals > 0, totals, 1), 0.0)))


def ips(rewards, target_propensities, logging_propensities, level: float = 0.95, bootstrap: int = 0,
        seed: int = 0) -> Estimate:
    rewards = _column(rewards)
    weights = importance_weights(_column(target_propensities), _column(logging_propensities))
    value = _ips_value(rewards, weights)
    if bootstrap:
        return _bootstrap(_ips_value, (rewards, weights), value, bootstrap, level, seed)
    per_impression = (weights * rewards).sum(axis=1)
    return _normal(value, per_impression.std(ddof=1) / np.sqrt(len(per_impression)), level)


def snips(rewards, target_propensities, logging_propensities, level: float = 0.95, bootstrap: int = 0,
          seed: int = 0) -> Estimate:
    rewards = _column(rewards)
    weights = importance_weights(_column(target_propensities), _column(logging_propensities))
    value = _snips_value(rewards, weights)
    if bootstrap:
        return _bootstrap(_snips_value, (rewards, weights), value, bootstrap, level, seed)
    # delta method: sum_s ratio_s is a smooth function of per-impression means, its influence is
    # sum_s w_is (r_is - ratio_s) / mean_i w_is
    mean_weight = weights.mean(axis=0)
    safe = np.where(mean_weight > 0, mean_weight, 1.0)
    ratios = np.where(mean_weight > 0, (weights * rewards).mean(axis=0) / safe, 0.0)
    influence = (weights * (rewards - ratios) / safe).sum(axis=1)
    return _normal(value, influence.std(ddof=1) / np.sqrt(len(influence)), level)


def doubly_robust(rewards, target_propensities, logging_propensities, model_logged, direct, level: float = 0.95,
                  bootstrap: int = 0, seed: int = 0) -> Estimate:
    """model_logged [n, L]: the reward model at the logged items; direct [n]: the model's expected
    value of the target policy, sum_s sum_a pi(a at s | x) q(x, a, s) (see `direct_term`)."""
    rewards = _column(rewards)
    weights = importance_weights(_column(target_propensities), _column(logging_propensities))
    per_impression = np.asarray(direct, dtype=np.float64) + (weights * (rewards - _column(model_logged))).sum(axis=1)
    value = float(per_impression.mean())
    if bootstrap:
        return _bootstrap(lambda p: float(p.mean()), (per_impression,), value, bootstrap, level, seed)
    return _normal(value, per_impression.std(ddof=1) / np.sqrt(len(per_impression)), level)


def direct_term(target_marginals: np.ndarray, model_rewards: np.ndarray) -> np.ndarray:
    """sum_s sum_a pi(a at s | x_i) q(x_i, a, s) for arrays [n, L, K] (or [n, K] for one slot)."""
    target_marginals = np.asarray(target_marginals, dtype=np.float64)
    model_rewards = np.asarray(model_rewards, dtype=np.float64)
    return (target_marginals * model_rewards).reshape(len(target_marginals), -1).sum(axis=1)
