"""A click simulator built from real interactions: users, their true next items, and fused candidates.

Each simulated user has a training history and "true interests": the items they really interacted
with next (for a ReChorus set, their dev and test items). Their candidate list is a static fusion of
popularity and item-CF fitted on the training part only: each component's top-N (history
excluded) pooled, normalized within the pool, weighted, and the top-K kept. The policies see the
features of `policies.build_context`; the simulator alone knows the attraction of each candidate:
high for a true next item, medium for one related to a true next item (complement or substitute,
either direction), low-medium for one of a true item's category, low otherwise.

Clicks follow a position-based model: P(click at slot s) = examination(s) * attraction(user, item),
examination(s) = 1 / (1 + s) ** power; a click leads to a cart and a cart to a purchase with fixed
probabilities. Everything is deterministic given the seed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.config import Settings
from pipelines.core.items import Items, Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.data.sources import rechorus
from pipelines.feedback import FeedbackParams
from pipelines.feedback.policies import (
    SlateContext,
    SlatePolicy,
    build_context,
    feature_names,
    minmax,
)
from pipelines.models.rankers.itemcf import ItemCF
from pipelines.models.rankers.popularity import Popularity
from pipelines.models.rankers.relations import Relations
from pipelines.ranking.fusion import normalize_scores

log = get_logger(__name__)

COMPONENTS = ("itemcf", "popularity")
EXTRA_FEATURES = ("related_to_history", "same_category_as_last")
BATCH = 256


@dataclass
class ShopData:
    """What the simulator is built from, in item positions."""

    items: Items
    interactions: pd.DataFrame  # user, item, timestamp: training part only, oldest first per user
    true_items: dict[int, np.ndarray]  # user -> the items they really took next
    relations: pd.DataFrame | None = None  # item, related_item, relation


@dataclass
class Candidates:
    """One user's fused top-K: what a policy sees, and the decomposition explanations read."""

    context: SlateContext
    history: np.ndarray
    normalized: dict[str, np.ndarray]  # component -> normalized score of each candidate (fused order)
    weights: dict[str, float]


@dataclass
class ClickSimulator:
    candidates: list[Candidates]
    attraction: np.ndarray  # [users, K], in each user's fused order
    examination: np.ndarray  # [slots]
    reward_per_click: float  # expected reward of a click with its carts and purchases
    params: FeedbackParams
    feature_names: list[str] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return len(self.candidates)

    @property
    def slate_size(self) -> int:
        return len(self.examination)

    def context(self, user: int) -> SlateContext:
        return self.candidates[user].context

    def feedback(self, user: int, picks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Per-slot (rewards, clicks) of serving candidates `picks` to `user`."""
        size = len(picks)
        clicks = rng.random(size) < self.examination[:size] * self.attraction[user, picks]
        carts = clicks & (rng.random(size) < self.params.simulator.cart_given_click)
        purchases = carts & (rng.random(size) < self.params.simulator.purchase_given_cart)
        weights = self.params.rewards
        rewards = weights.click * clicks + weights.add_to_cart * carts + weights.purchase * purchases
        return rewards.astype(np.float64), clicks

    def expected_reward(self, user: int, picks: np.ndarray) -> float:
        picks = np.asarray(picks)
        return float((self.examination[:len(picks)] * self.attraction[user, picks]).sum() * self.reward_per_click)

    def oracle_reward(self, user: int) -> float:
        """The best slate knowing attraction: the most attractive candidates, most attractive first."""
        best = np.sort(self.attraction[user])[::-1][:self.slate_size]
        return float((self.examination[:len(best)] * best).sum() * self.reward_per_click)

    def true_value(self, policy: SlatePolicy, users: np.ndarray | None = None) -> float:
        """Exact expected reward per impression of a frozen policy, users drawn uniformly."""
        users = np.arange(self.n_users) if users is None else users
        total = 0.0
        for user in users:
            marginals = policy.marginals(self.context(user))
            total += float((marginals * self.examination[:len(marginals), None] * self.attraction[user]).sum())
        return total / len(users) * self.reward_per_click


# ---------------------------------------------------------------- loading

def load_rechorus(path: Path) -> ShopData:
    """A ReChorus folder through the project's adapter: train events as history, dev+test items as true interests."""
    with tempfile.TemporaryDirectory(prefix="feedback-sim-") as folder:
        rechorus.convert(Path(path), Path(folder))
        read = lambda name: pd.read_csv(Path(folder) / name, dtype=str, keep_default_na=False)  # noqa: E731
        catalog, events, holdout = read("catalog.csv"), read("events.csv"), read("holdout.csv")
        relations_file = Path(folder) / "relations.csv"
        relations = read("relations.csv") if relations_file.exists() else None
    items = Items.from_catalog(catalog.drop(columns=["price"]))
    train = events[events["event_id"].str.startswith("train-")].copy()
    train["row"] = train["event_id"].str.rsplit("-", n=1).str[-1].astype(np.int64)
    users = pd.Index(sorted(set(train["user_id"]) & set(holdout["user_id"])))
    train = train[train["user_id"].isin(users)].sort_values(["user_id", "timestamp", "row"], kind="stable")
    interactions = pd.DataFrame({
        "user": users.get_indexer(train["user_id"]), "item": train["item_id"].map(items.position).to_numpy(),
        "timestamp": train["timestamp"].to_numpy(),
    }).dropna()
    interactions["item"] = interactions["item"].astype(np.int64)
    holdout = holdout[holdout["user_id"].isin(users) & holdout["item_id"].isin(items.position)]
    grouped = holdout.groupby("user_id")["item_id"].apply(list)
    true_items = {int(code): items.positions(ids) for code, ids in zip(users.get_indexer(grouped.index), grouped)}
    return ShopData(items, interactions.reset_index(drop=True), true_items, _relation_positions(relations, items))


def _relation_positions(relations: pd.DataFrame | None, items: Items) -> pd.DataFrame | None:
    if relations is None or relations.empty:
        return None
    frame = pd.DataFrame({"item": relations["item_id"].map(items.position),
                          "related_item": relations["related_item_id"].map(items.position),
                          "relation": relations["relation"]}).dropna()
    return frame.astype({"item": np.int64, "related_item": np.int64})


def last_item_holdout(items: Items, events: pd.DataFrame, relations: pd.DataFrame | None = None) -> ShopData:
    """Clean event tables (user_id, item_id, timestamp): each user's last item is their true interest."""
    events = events[events["item_id"].isin(items.position)].sort_values(["user_id", "timestamp"], kind="stable")
    counts = events.groupby("user_id")["item_id"].transform("size")
    events = events[counts >= 2]
    users = pd.Index(sorted(events["user_id"].unique()))
    last = events.groupby("user_id").tail(1)
    train = events.drop(last.index)
    interactions = pd.DataFrame({"user": users.get_indexer(train["user_id"]),
                                 "item": train["item_id"].map(items.position).astype(np.int64).to_numpy(),
                                 "timestamp": train["timestamp"].to_numpy()})
    true_items = {int(users.get_loc(user)): np.array([items.position[item]]) for user, item in
                  zip(last["user_id"], last["item_id"])}
    return ShopData(items, interactions, true_items, relations)


# ---------------------------------------------------------------- building

def fused_candidates(data: ShopData, settings: Settings) -> list[Candidates]:
    """Every user's fused top-K from popularity and item-CF fitted on the training interactions."""
    params = settings.feedback.simulator
    training = TrainingData(data.items, data.interactions, relations=data.relations)
    components = {"itemcf": ItemCF.from_settings(settings).fit(training),
                  "popularity": Popularity.from_settings(settings).fit(training)}
    relations = Relations.from_settings(settings).fit(training)
    histories = [group.to_numpy() for _, group in data.interactions.groupby("user", sort=True)["item"]]
    requests = [Request(history=tuple(int(i) for i in history)) for history in histories]
    categories = np.array(data.items.categories or [""] * len(data.items), dtype=object)
    out = []
    for start in range(0, len(requests), BATCH):
        batch = requests[start:start + BATCH]
        full = {name: np.asarray(ranker.score_all(batch), dtype=np.float64) for name, ranker in components.items()}
        related = relations.score_all(batch)
        for row, request in enumerate(batch):
            out.append(_one_user(request, {n: s[row] for n, s in full.items()}, np.asarray(related[row]), categories,
                                 params))
    return out


def _one_user(request: Request, scores: Mapping[str, np.ndarray], related: np.ndarray, categories: np.ndarray,
              params) -> Candidates:
    history = np.asarray(request.history, dtype=np.int64)
    pool = set()
    for values in scores.values():
        masked = values.copy()
        masked[history] = -np.inf
        pool.update(np.argsort(-masked, kind="stable")[:params.component_pool].tolist())
    pool = np.array(sorted(pool - set(history.tolist())), dtype=np.int64)
    normalized = {name: normalize_scores(scores[name][pool][None, :], params.normalization)[0] for name in COMPONENTS}
    fused = sum(params.fusion_weights.get(name, 0.0) * normalized[name] for name in COMPONENTS)
    keep = np.argsort(-fused, kind="stable")[:params.candidates]
    items = pool[keep]
    last_category = categories[history[-1]] if len(history) else ""
    extra = {"related_to_history": minmax(related[items]),
             "same_category_as_last": (categories[items] == last_category) & (last_category != "")}
    context = build_context(items, fused[keep], {name: normalized[name][keep] for name in COMPONENTS}, extra)
    return Candidates(context, history, {name: normalized[name][keep] for name in COMPONENTS},
                      {name: params.fusion_weights.get(name, 0.0) for name in COMPONENTS})


def attraction_table(data: ShopData, candidates: list[Candidates], params) -> np.ndarray:
    related_to: dict[int, set[int]] = {}
    if data.relations is not None:
        for left, right in zip(data.relations["item"], data.relations["related_item"]):
            related_to.setdefault(int(left), set()).add(int(right))
            related_to.setdefault(int(right), set()).add(int(left))
    categories = np.array(data.items.categories or [""] * len(data.items), dtype=object)
    table = np.full((len(candidates), len(candidates[0].context)), params.attraction_other)
    for user, entry in enumerate(candidates):
        truth = data.true_items.get(user, np.zeros(0, dtype=np.int64))
        related = set().union(*(related_to.get(int(t), set()) for t in truth)) if len(truth) else set()
        true_categories = {categories[t] for t in truth} - {""}
        true_set = set(truth.tolist())
        for slot, item in enumerate(entry.context.items):
            if int(item) in true_set:
                table[user, slot] = params.attraction_true
            elif int(item) in related:
                table[user, slot] = params.attraction_related
            elif categories[item] in true_categories:
                table[user, slot] = params.attraction_category
    return table


def build_simulator(data: ShopData, settings: Settings) -> ClickSimulator:
    params = settings.feedback
    sim = params.simulator
    candidates = fused_candidates(data, settings)
    attraction = attraction_table(data, candidates, sim)
    size = min(params.exploration.slate_size, params.exploration.top_m, sim.candidates)
    examination = 1.0 / (1.0 + np.arange(size)) ** sim.examination_power
    per_click = (params.rewards.click + sim.cart_given_click * params.rewards.add_to_cart
                 + sim.cart_given_click * sim.purchase_given_cart * params.rewards.purchase)
    log.info("click simulator built", extra={"users": len(candidates), "candidates": sim.candidates,
                                             "true_in_candidates": float((attraction == sim.attraction_true).any(1).mean())})
    return ClickSimulator(candidates, attraction, examination, per_click, params,
                          feature_names(COMPONENTS, EXTRA_FEATURES))


# ---------------------------------------------------------------- running a policy

@dataclass
class OnlineRun:
    users: np.ndarray
    candidates: np.ndarray  # [n, L] served candidate indices
    propensities: np.ndarray  # [n, L]
    rewards: np.ndarray  # [n, L]
    clicks: np.ndarray  # [n, L] booleans
    expected: np.ndarray  # [n] expected reward of the served slate
    oracle: np.ndarray  # [n] expected reward of the oracle slate


def run_policy(simulator: ClickSimulator, policy: SlatePolicy, impressions: int, seed: int, learn: bool = True,
               progress=None) -> OnlineRun:
    """Serve `impressions` slates to uniformly drawn users; the policy learns from each unless learn=False."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, simulator.n_users, impressions)
    size = simulator.slate_size
    out = {name: np.zeros((impressions, size)) for name in ("candidates", "propensities", "rewards", "clicks")}
    expected, oracle = np.zeros(impressions), np.zeros(impressions)
    for index, user in enumerate(users):
        context = simulator.context(user)
        slate = policy.rank(context)
        rewards, clicks = simulator.feedback(user, slate.candidates, rng)
        if learn:
            policy.update(context, slate, rewards)
        out["candidates"][index], out["propensities"][index] = slate.candidates, slate.propensities
        out["rewards"][index], out["clicks"][index] = rewards, clicks
        expected[index] = simulator.expected_reward(user, slate.candidates)
        oracle[index] = simulator.oracle_reward(user)
        if progress is not None:
            progress()
    return OnlineRun(users, out["candidates"].astype(np.int64), out["propensities"], out["rewards"],
                     out["clicks"].astype(bool), expected, oracle)
