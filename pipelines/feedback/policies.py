"""Contextual bandit re-rankers of a fused top-K list, with exact or estimated slot propensities.

A context is the K fused candidates of one request, ordered by fused score (candidate index =
fused rank), each with a feature vector. A slate of `slate_size` slots is built slot by slot under
bounded exploration: only the fused top-M may be served, and no item moves more than `max_shift`
slots from its fused rank (an item still unplaced `max_shift` slots after its rank is forced in).

Exploration is mixed in per slate: with probability epsilon the slate is built by picking uniformly
among the allowed items at every slot, else by the policy's own scores. So the probability that a
policy puts candidate r at slot s given the context (its *marginal*, what position-based
off-policy estimators need) is

    (1 - eps) * P(own choice puts r at s) + eps * U[s, r]

with U computed exactly once per (K, slate size, bounds) by dynamic programming. The own choice is
deterministic for LinUCB, epsilon-greedy and a fixed scorer (so their propensities are exact) and
a posterior draw for Thompson sampling (estimated by Monte Carlo over draws).

Rewards are learned with one shared linear model over candidate features; the reward at slot s is
modelled as w_s * theta . x with w_s = 1 / (1 + s) ** position_bias, a known position discount,
so items are ranked by theta . x.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from pipelines.core.atomic import atomic_write_text
from pipelines.core.logs import get_logger
from pipelines.feedback import ExplorationParams, PolicyParams, RewardParams

log = get_logger(__name__)

FORMAT_VERSION = 1


# ---------------------------------------------------------------- contexts and slates

@dataclass
class SlateContext:
    """K candidates in fused order: item ids, fused scores, features [K, d]."""

    items: np.ndarray
    fused: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def logged_features(self) -> list[list[float]]:
        """The features rounded as served lists log them (a cached list's context rounds them once)."""
        return self.features.round(4).tolist()


@dataclass
class Slate:
    candidates: np.ndarray  # candidate index (fused rank) served at each slot
    items: np.ndarray  # the item ids served
    propensities: np.ndarray  # P(this policy puts that candidate at that slot | context)
    explored: bool = False


def minmax(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    spread = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


def build_context(items: np.ndarray, fused: np.ndarray, components: Mapping[str, np.ndarray],
                  extra: Mapping[str, np.ndarray] | None = None) -> SlateContext:
    """The features every policy reads, in one place for training and serving: a bias, the fused
    score and each component's score (min-max within the list), extra item features as given, and
    1 / (1 + fused rank)."""
    order = np.argsort(-np.asarray(fused, dtype=np.float64), kind="stable")
    columns = [np.ones(len(order)), minmax(np.asarray(fused)[order])]
    columns += [minmax(np.asarray(components[name])[order]) for name in sorted(components)]
    columns += [np.asarray(extra[name], dtype=np.float64)[order] for name in sorted(extra or {})]
    columns.append(1.0 / (1.0 + np.arange(len(order))))
    return SlateContext(np.asarray(items)[order], np.asarray(fused, dtype=np.float64)[order], np.column_stack(columns))


def feature_names(components: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    return ["bias", "fused", *sorted(components), *sorted(extra), "reciprocal_rank"]


def slot_rewards(size: int, events: Iterable[tuple[int, str]], weights: RewardParams) -> np.ndarray:
    """Per-slot rewards from feedback events (slot, event type); unknown event types count 0. Each (slot, event
    type) counts once: a client that retries a /feedback whose answer it missed (the event was written, the reply
    lost) must not double its reward, and a second click on the same slot of one list says nothing new."""
    table = weights.model_dump()
    rewards = np.zeros(size)
    for slot, event_type in dict.fromkeys((int(slot), event_type) for slot, event_type in events):
        if 0 <= slot < size:
            rewards[slot] += table.get(event_type, 0.0)
    return rewards


def position_weights(size: int, power: float) -> np.ndarray:
    return 1.0 / (1.0 + np.arange(size)) ** power


# ---------------------------------------------------------------- bounded slot-by-slot construction

def _bounds(n_candidates: int, bounds: ExplorationParams) -> tuple[int, int, int]:
    top_m = min(bounds.top_m, n_candidates)
    return min(bounds.slate_size, top_m), top_m, bounds.max_shift


def _allowed(chosen: int, slot: int, top_m: int, max_shift: int) -> list[int]:
    """Candidates allowed at `slot` given the chosen ones (a bit mask): the overdue one if any."""
    overdue = [r for r in range(0, max(0, slot - max_shift + 1)) if not chosen >> r & 1]
    if overdue:
        return overdue[:1]
    return [r for r in range(min(slot + max_shift, top_m - 1) + 1) if not chosen >> r & 1]


@lru_cache(maxsize=64)
def _uniform_marginals(n_candidates: int, size: int, top_m: int, max_shift: int) -> np.ndarray:
    states: dict[int, float] = {0: 1.0}
    marginals = np.zeros((size, n_candidates))
    for slot in range(size):
        following: dict[int, float] = defaultdict(float)
        for chosen, probability in states.items():
            options = _allowed(chosen, slot, top_m, max_shift)
            share = probability / len(options)
            for r in options:
                marginals[slot, r] += share
                following[chosen | 1 << r] += share
        states = following
    marginals.setflags(write=False)
    return marginals


def uniform_marginals(n_candidates: int, bounds: ExplorationParams) -> np.ndarray:
    """Exact P(candidate r at slot s) when every slot picks uniformly among the allowed candidates."""
    return _uniform_marginals(n_candidates, *_bounds(n_candidates, bounds))


def uniform_slate(n_candidates: int, bounds: ExplorationParams, rng: np.random.Generator) -> np.ndarray:
    size, top_m, max_shift = _bounds(n_candidates, bounds)
    chosen, picks = 0, []
    for slot in range(size):
        options = _allowed(chosen, slot, top_m, max_shift)
        pick = options[int(rng.integers(len(options)))]
        picks.append(pick)
        chosen |= 1 << pick
    return np.array(picks, dtype=np.int64)


def greedy_slates(scores: np.ndarray, bounds: ExplorationParams) -> np.ndarray:
    """For each row of scores [N, K], the slate that takes the best-scored allowed candidate at each slot."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n_rows, n_candidates = scores.shape
    size, top_m, max_shift = _bounds(n_candidates, bounds)
    if n_rows == 1:  # a served request: a plain loop over the top_m is ~10x faster than the array steps
        return _greedy_slate(scores[0, :top_m].tolist(), size, top_m, max_shift)[None, :]
    ranks = np.arange(n_candidates)
    chosen = np.zeros((n_rows, n_candidates), dtype=bool)
    slates = np.empty((n_rows, size), dtype=np.int64)
    rows = np.arange(n_rows)
    for slot in range(size):
        overdue = ~chosen & (ranks <= slot - max_shift)
        allowed = ~chosen & (ranks < top_m) & (ranks <= slot + max_shift)
        pick = np.argmax(np.where(allowed, scores, -np.inf), axis=1)
        pick = np.where(overdue.any(axis=1), np.argmax(overdue, axis=1), pick)
        slates[:, slot] = pick
        chosen[rows, pick] = True
    return slates


def _greedy_slate(scores: list[float], size: int, top_m: int, max_shift: int) -> np.ndarray:
    """greedy_slates of one row: at each slot the overdue candidate, else the best-scored allowed one (the
    first of equals, as np.argmax). `_allowed`'s rules, kept as a list of flags (one call per served list)."""
    chosen, picks, first_open = [False] * top_m, [], 0
    for slot in range(size):
        while chosen[first_open]:
            first_open += 1
        if first_open <= slot - max_shift:  # overdue: it may not drift further from its rank
            pick = first_open
        else:
            pick = max((r for r in range(first_open, min(slot + max_shift, top_m - 1) + 1) if not chosen[r]),
                       key=scores.__getitem__)
        picks.append(pick)
        chosen[pick] = True
    return np.array(picks, dtype=np.int64)


def slate_marginals(slates: np.ndarray, n_candidates: int) -> np.ndarray:
    """Empirical P(candidate at slot) over rows of slates [N, L]."""
    counts = np.zeros((slates.shape[1], n_candidates))
    if len(slates) == 1:  # one served list (a deterministic policy's own slate): its one-hot rows
        counts[np.arange(slates.shape[1]), slates[0]] = 1.0
        return counts
    for slot in range(slates.shape[1]):
        counts[slot] = np.bincount(slates[:, slot], minlength=n_candidates)
    return counts / len(slates)


# ---------------------------------------------------------------- atomic persistence

# ---------------------------------------------------------------- the reward model

class LinearRewardModel:
    """Ridge regression of slot rewards on w_s * x: A = ridge I + sum w^2 x x^T, b = sum w r x.
    A^-1 and theta are solved again on their first use after updates (a serving worker settles hundreds of
    lists a second, then orders with the result: one inverse, not one per list)."""

    def __init__(self, dimension: int, ridge: float):
        self.precision = ridge * np.eye(dimension)
        self.moment = np.zeros(dimension)
        self._refresh()

    def _refresh(self) -> None:
        self._covariance = np.linalg.inv(self.precision)
        self._theta = self._covariance @ self.moment
        self._stale = False

    @property
    def covariance(self) -> np.ndarray:
        if self._stale:
            self._refresh()
        return self._covariance

    @property
    def theta(self) -> np.ndarray:
        if self._stale:
            self._refresh()
        return self._theta

    def update(self, features: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> None:
        scaled = features * weights[:, None]
        self.precision = self.precision + scaled.T @ scaled
        self.moment = self.moment + scaled.T @ rewards
        self._stale = True

    def mean(self, features: np.ndarray) -> np.ndarray:
        return features @ self.theta

    def width(self, features: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(((features @ self.covariance) * features).sum(axis=1), 0.0))

    def state(self) -> dict:
        return {"precision": self.precision.tolist(), "moment": self.moment.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "LinearRewardModel":
        precision = np.array(state["precision"], dtype=np.float64)
        model = cls(len(precision), 1.0)
        model.precision, model.moment = precision, np.array(state["moment"], dtype=np.float64)
        model._refresh()
        return model


# ---------------------------------------------------------------- policies

class SlatePolicy:
    """Base: ranks a context into a slate with per-slot propensities; learns from per-slot rewards."""

    kind = "policy"

    def __init__(self, dimension: int, exploration: ExplorationParams, params: PolicyParams, epsilon: float,
                 seed: int = 0):
        self.dimension = dimension
        self.exploration = exploration
        self.params = params
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)
        self.n_updates = 0

    # scores of the policy's own choice; Thompson overrides `own_marginals` and `own_slate`
    def scores(self, context: SlateContext) -> np.ndarray:
        raise NotImplementedError

    def own_slate(self, context: SlateContext) -> np.ndarray:
        return greedy_slates(self.scores(context), self.exploration)[0]

    def own_marginals(self, context: SlateContext, served: np.ndarray | None = None,
                      own: np.ndarray | None = None) -> np.ndarray:
        """own: this policy's slate of this context when the caller has it (a deterministic policy's marginals
        are that one slate)."""
        return slate_marginals((self.own_slate(context) if own is None else own)[None, :], len(context))

    def marginals(self, context: SlateContext, served: np.ndarray | None = None,
                  own: np.ndarray | None = None) -> np.ndarray:
        """P(candidate r at slot s | context), shape [slots, K]."""
        uniform = uniform_marginals(len(context), self.exploration)
        return (1.0 - self.epsilon) * self.own_marginals(context, served, own) + self.epsilon * uniform

    def rank(self, context: SlateContext) -> Slate:
        explored = bool(self.rng.random() < self.epsilon)
        own = None if explored else self.own_slate(context)
        picks = uniform_slate(len(context), self.exploration, self.rng) if explored else own
        return Slate(picks, context.items[picks], self.slot_propensities(context, picks, own), explored)

    def slot_propensities(self, context: SlateContext, picks: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """P(each pick at its slot | context): the cells of `marginals` a served slate reads. The own marginals
        of a deterministic policy are the one-hot rows of its own slate, so only those cells are computed
        (Thompson, whose own marginals are sampled, reads them from `marginals`)."""
        own = self.own_slate(context) if own is None else own
        uniform = uniform_marginals(len(context), self.exploration)[np.arange(len(picks)), picks]
        return (1.0 - self.epsilon) * (picks == own) + self.epsilon * uniform

    def update(self, context: SlateContext, slate: Slate, rewards: np.ndarray) -> None:
        self.n_updates += 1

    # persistence
    def state(self) -> dict:
        return {"format": FORMAT_VERSION, "kind": self.kind, "dimension": self.dimension,
                "exploration": self.exploration.model_dump(), "params": self.params.model_dump(),
                "epsilon": self.epsilon, "n_updates": self.n_updates, "rng": self.rng.bit_generator.state}

    def _restore(self, state: dict) -> None:
        self.n_updates = int(state["n_updates"])
        self.rng.bit_generator.state = state["rng"]

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.state()))


class _LearningPolicy(SlatePolicy):
    def __init__(self, dimension, exploration, params, epsilon, seed=0):
        super().__init__(dimension, exploration, params, epsilon, seed)
        self.model = LinearRewardModel(dimension, params.ridge)

    def update(self, context: SlateContext, slate: Slate, rewards: np.ndarray) -> None:
        weights = position_weights(len(slate.candidates), self.params.position_bias)
        self.model.update(context.features[slate.candidates], np.asarray(rewards, dtype=np.float64), weights)
        self.n_updates += 1

    def state(self) -> dict:
        return {**super().state(), "model": self.model.state()}

    def _restore(self, state: dict) -> None:
        super()._restore(state)
        self.model = LinearRewardModel.from_state(state["model"])


class EpsilonGreedy(_LearningPolicy):
    """Greedy on the ridge estimate; a share `greedy_epsilon` of slates explores uniformly."""

    kind = "epsilon_greedy"

    def __init__(self, dimension, exploration, params, seed=0):
        super().__init__(dimension, exploration, params, params.greedy_epsilon, seed)

    def scores(self, context):
        return self.model.mean(context.features)


class LinUCB(_LearningPolicy):
    """Optimism: mean + alpha * sqrt(x^T A^-1 x); epsilon mixing only keeps propensities positive."""

    kind = "linucb"

    def __init__(self, dimension, exploration, params, seed=0):
        super().__init__(dimension, exploration, params, exploration.epsilon, seed)

    def scores(self, context):
        return self.model.mean(context.features) + self.params.alpha * self.model.width(context.features)


class ThompsonSampling(_LearningPolicy):
    """One posterior draw theta ~ N(theta_hat, scale^2 A^-1) a slate; propensities by Monte Carlo over draws."""

    kind = "thompson"

    def __init__(self, dimension, exploration, params, seed=0):
        super().__init__(dimension, exploration, params, exploration.epsilon, seed)

    def _draws(self, count: int) -> np.ndarray:
        factor = np.linalg.cholesky(self.model.covariance + 1e-12 * np.eye(self.dimension))
        noise = self.rng.standard_normal((count, self.dimension))
        return self.model.theta + self.params.thompson_scale * noise @ factor.T

    def scores(self, context):
        return context.features @ self._draws(1)[0]

    def own_marginals(self, context, served=None, own=None):  # a draw's slate says nothing of the others
        draws = context.features @ self._draws(self.params.thompson_samples).T  # [K, N]
        slates = greedy_slates(draws.T, self.exploration)
        if served is not None:  # the served draw counts too, so a served slot never gets propensity 0
            slates = np.vstack([slates, served[None, :]])
        return slate_marginals(slates, len(context))

    def own_slate(self, context):
        return greedy_slates(self.scores(context), self.exploration)[0]

    def slot_propensities(self, context, picks, own=None):
        return self.marginals(context, served=picks, own=own)[np.arange(len(picks)), picks]


class FixedLinearPolicy(SlatePolicy):
    """A frozen scorer theta . x (e.g. trained offline by REINFORCE), served greedily with epsilon mixing."""

    kind = "fixed_linear"

    def __init__(self, theta: np.ndarray, exploration, params, epsilon: float | None = None, seed=0):
        super().__init__(len(theta), exploration, params, exploration.epsilon if epsilon is None else epsilon, seed)
        self.theta = np.asarray(theta, dtype=np.float64)

    def scores(self, context):
        return context.features @ self.theta

    def state(self):
        return {**super().state(), "theta": self.theta.tolist()}

    def _restore(self, state):
        super()._restore(state)
        self.theta = np.array(state["theta"], dtype=np.float64)


class StaticFusion(SlatePolicy):
    """The fused order itself (the baseline); with epsilon > 0 it is the exploration logging policy."""

    kind = "static"

    def __init__(self, dimension, exploration, params, epsilon: float = 0.0, seed=0):
        super().__init__(dimension, exploration, params, epsilon, seed)

    def scores(self, context):
        return -np.arange(len(context), dtype=np.float64)

    def own_slate(self, context):
        """The greedy slate of scores that fall with the fused rank: the fused order (every serving worker asks
        this once a request until the learned policy takes over)."""
        return np.arange(_bounds(len(context), self.exploration)[0], dtype=np.int64)


POLICIES = {cls.kind: cls for cls in (EpsilonGreedy, LinUCB, ThompsonSampling, FixedLinearPolicy, StaticFusion)}


def make_policy(kind: str, dimension: int, exploration: ExplorationParams, params: PolicyParams,
                seed: int = 0) -> SlatePolicy:
    if kind not in (EpsilonGreedy.kind, LinUCB.kind, ThompsonSampling.kind, StaticFusion.kind):
        raise ValueError(f"unknown policy {kind!r}")
    return POLICIES[kind](dimension, exploration, params, seed=seed)


def load_policy(path: Path) -> SlatePolicy:
    """Restore a policy saved with `save`: same model, counters and random state."""
    return policy_from_state(json.loads(Path(path).read_text(encoding="utf-8")), str(path))


def policy_from_state(state: dict, source: str = "state") -> SlatePolicy:
    if state.get("format") != FORMAT_VERSION or state.get("kind") not in POLICIES:
        raise ValueError(f"{source}: not a saved feedback policy")
    exploration = ExplorationParams.model_validate(state["exploration"])
    params = PolicyParams.model_validate(state["params"])
    cls = POLICIES[state["kind"]]
    if cls is FixedLinearPolicy:
        policy = cls(np.array(state["theta"]), exploration, params, epsilon=state["epsilon"])
    elif cls is StaticFusion:
        policy = cls(state["dimension"], exploration, params, epsilon=state["epsilon"])
    else:
        policy = cls(state["dimension"], exploration, params)
    policy.epsilon = float(state["epsilon"])
    policy._restore(state)
    return policy


class PeriodicSaver:
    """Saves the policy after every `every_updates` updates or `every_seconds` seconds, whichever comes first."""

    def __init__(self, policy: SlatePolicy, path: Path, every_updates: int, every_seconds: float,
                 clock=time.monotonic):
        self.policy, self.path = policy, Path(path)
        self.every_updates, self.every_seconds, self.clock = every_updates, every_seconds, clock
        self.pending, self.last_save = 0, clock()

    @classmethod
    def from_params(cls, policy: SlatePolicy, path: Path) -> "PeriodicSaver":
        return cls(policy, path, policy.params.save_every_updates, policy.params.save_every_seconds)

    def notify(self) -> bool:
        """Call after each update; returns whether it saved."""
        self.pending += 1
        if self.pending >= self.every_updates or self.clock() - self.last_save >= self.every_seconds:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        self.policy.save(self.path)
        self.pending, self.last_save = 0, self.clock()
        log.info("feedback policy saved", extra={"kind": self.policy.kind, "updates": self.policy.n_updates})
