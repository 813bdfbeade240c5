"""A policy-gradient re-ranker trained offline on logged slates: REINFORCE with a learned baseline.

The policy is Plackett-Luce over candidate features: slot by slot, it picks among the allowed
candidates (the same bounds the bandits use) with probability softmax(theta . x). Trained off-policy
on slates logged by another policy (e.g. the static fusion with epsilon exploration), per slot:

    gradient = mean_i sum_s  rho_is * (r_is - b(x_i, s)) * grad log pi_theta(a_is | x_i, logged prefix)
    rho_is   = min(clip, pi_theta(a_is | x_i, prefix) / mu(a_is at s | x_i))

The slot-conditional probability given the logged prefix stands in for the policy's marginal at
that slot (the usual top-K off-policy correction); clipping trades a little bias for variance. The
baseline b(x, s) = slot constant + v . (mean features of the allowed candidates) is fitted by least
squares on the log and reduces the gradient's variance without biasing it. Serving uses the mode of
the Plackett-Luce policy (the greedy slate of theta . x) with epsilon mixing, so its propensities
are exact: `policies.FixedLinearPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.core.logs import get_logger
from pipelines.feedback import ExplorationParams, PolicyParams, ReinforceParams
from pipelines.feedback.policies import FixedLinearPolicy, SlateContext

log = get_logger(__name__)


@dataclass
class LoggedSlates:
    features: np.ndarray  # [n, K, d] candidate features in fused order
    candidates: np.ndarray  # [n, L] served candidate index per slot
    rewards: np.ndarray  # [n, L]
    propensities: np.ndarray  # [n, L] logging policy's marginal slot propensities

    @classmethod
    def from_contexts(cls, contexts: list[SlateContext], candidates, rewards, propensities) -> "LoggedSlates":
        return cls(np.stack([c.features for c in contexts]), np.asarray(candidates, dtype=np.int64),
                   np.asarray(rewards, dtype=np.float64), np.asarray(propensities, dtype=np.float64))


@dataclass
class ReinforceResult:
    theta: np.ndarray
    baseline: np.ndarray
    objective: list[float] = field(default_factory=list)  # clipped importance-weighted value, per step

    def policy(self, exploration: ExplorationParams, params: PolicyParams, seed: int = 0) -> FixedLinearPolicy:
        return FixedLinearPolicy(self.theta, exploration, params, seed=seed)


def allowed_masks(candidates: np.ndarray, n_candidates: int, bounds: ExplorationParams) -> tuple[np.ndarray, np.ndarray]:
    """For each logged slot, which candidates the bounds allowed given the logged prefix [n, L, K], and
    whether the slot was forced (only one allowed) [n, L]."""
    n, size = candidates.shape
    top_m = min(bounds.top_m, n_candidates)
    ranks = np.arange(n_candidates)
    chosen = np.zeros((n, n_candidates), dtype=bool)
    allowed = np.zeros((n, size, n_candidates), dtype=bool)
    rows = np.arange(n)
    for slot in range(size):
        overdue = ~chosen & (ranks <= slot - bounds.max_shift)
        window = ~chosen & (ranks < top_m) & (ranks <= slot + bounds.max_shift)
        allowed[:, slot] = np.where(overdue.any(axis=1, keepdims=True), overdue, window)
        chosen[rows, candidates[:, slot]] = True
    return allowed, allowed.sum(axis=2) <= 1


def _baseline_design(features: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """[n, L, L + d]: a slot one-hot and the mean features of the allowed candidates."""
    n, size, _ = allowed.shape
    counts = np.maximum(allowed.sum(axis=2, keepdims=True), 1)
    mean_features = (allowed.astype(np.float64) @ features) / counts
    slots = np.broadcast_to(np.eye(size), (n, size, size))
    return np.concatenate([slots, mean_features], axis=2)


def fit_baseline(features, allowed, rewards, ridge: float = 1e-3) -> np.ndarray:
    design = _baseline_design(features, allowed).reshape(-1, allowed.shape[1] + features.shape[2])
    gram = design.T @ design + ridge * np.eye(design.shape[1])
    return np.linalg.solve(gram, design.T @ rewards.reshape(-1))


def _slot_log_probabilities(theta, features, allowed) -> np.ndarray:
    """log softmax of theta . x over the allowed candidates, [n, L, K] (-inf where not allowed)."""
    logits = features @ theta  # [n, K]
    masked = np.where(allowed, logits[:, None, :], -np.inf)
    top = masked.max(axis=2, keepdims=True)
    return masked - top - np.log(np.exp(masked - top).sum(axis=2, keepdims=True))


def _gradient(theta, logged: LoggedSlates, allowed, learning, advantage, served_features, rows, clip):
    """The clipped off-policy REINFORCE gradient on a minibatch, and its clipped IPS value."""
    features, candidates = logged.features[rows], logged.candidates[rows]
    log_probabilities = _slot_log_probabilities(theta, features, allowed)
    served = np.take_along_axis(log_probabilities, candidates[:, :, None], axis=2)[..., 0]
    ratio = np.minimum(np.exp(served) / logged.propensities[rows], clip) * learning
    probabilities = np.exp(log_probabilities)  # exp(-inf) = 0 outside the allowed set
    score_function = served_features - probabilities @ features
    gradient = (ratio * advantage).reshape(-1) @ score_function.reshape(-1, features.shape[2]) / len(rows)
    return gradient, float((ratio * logged.rewards[rows]).sum(axis=1).mean())


def train_reinforce(logged: LoggedSlates, bounds: ExplorationParams, params: ReinforceParams) -> ReinforceResult:
    n, n_candidates, dimension = logged.features.shape
    allowed, forced = allowed_masks(logged.candidates, n_candidates, bounds)
    baseline = fit_baseline(logged.features, allowed, logged.rewards)
    advantage = logged.rewards - _baseline_design(logged.features, allowed) @ baseline
    learning = ~forced
    served_features = np.take_along_axis(logged.features, logged.candidates[:, :, None], axis=1)  # [n, L, d]
    rng = np.random.default_rng(params.seed)
    theta = rng.normal(scale=0.01, size=dimension)
    first, second = np.zeros(dimension), np.zeros(dimension)  # Adam moments
    objective = []
    for step in range(1, params.steps + 1):
        rows = rng.choice(n, size=min(params.batch, n), replace=False)
        gradient, value = _gradient(theta, logged, allowed[rows], learning[rows], advantage[rows],
                                    served_features[rows], rows, params.weight_clip)
        objective.append(value)
        gradient = gradient - params.l2 * theta
        first = 0.9 * first + 0.1 * gradient
        second = 0.999 * second + 0.001 * gradient ** 2
        theta = theta + params.learning_rate * (first / (1 - 0.9 ** step)) / (np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
    log.info("reinforce trained", extra={"impressions": n, "steps": params.steps, "objective": objective[-1]})
    return ReinforceResult(theta, baseline, objective)
