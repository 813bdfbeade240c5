"""The serving engine: search, recommend and similar over a verified model bundle.

Ranking is the offline code path itself (pipelines.ranking.fused and the fitted fusions), so a served list
scores exactly as the evaluate stage scored it. Every answer carries, per item, the contribution of
each component to its fused score (LightGBM's exact per-feature contributions grouped by component
for the LambdaRank stack; weight x normalized score for the weighted fusion) and evidence reasons.
Unknown users and items get a defined fallback instead of an error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.items import Items, Request
from pipelines.core.logs import get_logger
from pipelines.core.params import PrivacyParams
from pipelines.feedback.policies import SlateContext
from pipelines.models import rankers
from pipelines.ranking import fused
from pipelines.ranking.catalog import CatalogView, Product, base_view, build_view
from pipelines.ranking.explain import Contribution, evidence, group_shapley, sentence, with_fresh_event
from pipelines.ranking.tasks import (
    TASKS,
    load_fusions,
    load_served,
    load_relevance,
    load_matcher,
)
from pipelines.serving.bundle import verify
from pipelines.serving.params import ServingParams

log = get_logger(__name__)

POPULAR_SPARE = 50  # popular items kept beyond max_k, so a cold-start list stays full when some are hidden



@dataclass
class Filters:
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    def mask(self, items: Items, positions: np.ndarray) -> np.ndarray:
        keep = positions != fused.PADDING
        safe = np.where(keep, positions, 0)
        if self.category:
            wanted = self.category.casefold()
            keep &= np.array([items.categories[p].casefold().startswith(wanted) for p in safe], dtype=bool)
        if items.prices is not None and (self.price_min is not None or self.price_max is not None):
            prices = items.prices[safe]
            if self.price_min is not None:
                keep &= prices >= self.price_min
            if self.price_max is not None:
                keep &= prices <= self.price_max
        return keep

    def key(self) -> tuple:
        return (self.category, self.price_min, self.price_max)


@dataclass
class Ranked:
    """A fused candidate list, best first, with what the explanations and the bandit need."""

    positions: np.ndarray  # item positions, best first
    scores: np.ndarray  # fused scores
    component_scores: dict[str, np.ndarray]  # each component's raw score of each candidate
    stack_features: np.ndarray | None = None  # LambdaRank inputs, one row per candidate (None: weighted fusion)
    contributions: list[dict[str, float]] | None = None  # weighted fusion: component -> weight x normalized score
    fallback: str | None = None
    notes: list[str] = field(default_factory=list)
    # filled on first use and kept with the cached list: a hot query's answer is explained once
    explained: dict[int, dict[str, float]] = field(default_factory=dict)  # candidate index -> contributions
    base: float = 0.0  # the part of every fused score no component explains (LightGBM's expected value)
    described: dict[int, dict] = field(default_factory=dict)  # candidate index -> item entry with explanation
    bandit_context: SlateContext | None = None  # the bandit's features of this list (online.Served.context)

    @classmethod
    def empty(cls, **kwargs) -> "Ranked":
        """A list with no candidate (why: in notes, or the fallback that answers)."""
        return cls(np.zeros(0, np.int64), np.zeros(0), {}, **kwargs)


def _component_groups(feature_names: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """(group names, the indices of each one's stacked features): a feature named after a component
    (`bm25_score`, `bm25_z`, `itemcf_last`, `relations_category_last`) joins that component's group, any
    other its name's head (`title_overlap` -> title, `activity_days_last` -> activity)."""
    components = [name[:-len("_score")] for name in feature_names if name.endswith("_score")]
    groups = [next((component for component in components if name.startswith(component + "_")), name.split("_", 1)[0])
              for name in feature_names]
    names = list(dict.fromkeys(groups))
    return names, [[index for index, group in enumerate(groups) if group == name] for name in names]


class Engine:
    """Loads a bundle once; thread-safe for concurrent requests (read-only state)."""

    def __init__(self, folder: Path, params: ServingParams, encode: Callable[[list[str]], np.ndarray] | None = None,
                 manifest: dict | None = None):
        """manifest: the bundle's, when the caller has just verified it (checksums are not computed twice)."""
        self.folder = Path(folder)
        self.manifest = manifest or verify(self.folder)
        self.params = params
        self.version = self.manifest["revision"]
        frame = pd.read_parquet(self.folder / "items.parquet")
        items = Items(frame["item_id"].astype(str).to_numpy(), frame["title"].tolist(), frame["text"].tolist(),
                           frame["category"].tolist(), frame["brand"].tolist(), frame["price"].to_numpy(dtype=float))
        histories = pd.read_parquet(self.folder / "histories.parquet")
        self.histories = {user: tuple(int(i) for i in items) for user, items in zip(histories["user"], histories["items"])}
        components = {name: rankers.load(name, self.folder / "recall" / name) for name in self.manifest["components"]}
        limit_native_threads(params.encoder_threads)
        stored = self.manifest["serving"]["ranking"]
        self.task_components = {"search": stored["search_components"], "recommend": stored["recommend_components"]}
        self.pool_k = stored["candidates_per_component"]
        # a task the fuse stage skipped (no requests) has no fusion: the app answers it with a fallback
        self.fusions = {task: load_fusions(self.folder / "fusion", task) for task in TASKS
                        if (self.folder / "fusion" / task).is_dir()}
        self.served = {task: load_served(self.folder / "fusion", task) for task in self.fusions}
        self.relevance_models = {task: model for task in self.fusions
                                 if (model := load_relevance(self.folder / "fusion", task)) is not None
                                 and model.feature_names == self.fusions[task][1].feature_names}
        matchers = {task: matcher for task in self.fusions
                    if (matcher := load_matcher(self.folder / "fusion", task)) is not None}
        # each component's stacked features, for the Shapley explanations (the same for every list of a task)
        self.stack_groups = {task: _component_groups(fusion[1].feature_names) for task, fusion in self.fusions.items()}
        if encode is not None and "dense" in components:
            components["dense"]._encoder = EncoderAdapter(encode)
        # the catalog the requests rank over: the bundle's, until the catalog stream adds or hides products
        self.base_view = self.view = base_view(items, components, matchers)
        self._bm25_average_length: float | None = None
        self._products: list[Product] = []  # the catalog stream's state, and the live popularity scores
        self._live_popularity: dict[str, float] = {}
        self._live_version = 0
        self._rebuild_lock = threading.Lock()
        log.info("engine loaded", extra={"version": self.version, "items": len(self.items),
                                          "users": len(self.histories), "components": list(self.components)})

    # ------------------------------------------------------------------ the catalog
    @property
    def items(self) -> Items:
        return self.view.items

    @property
    def components(self) -> dict:
        return self.view.components

    @property
    def matchers(self) -> dict:
        return self.view.matchers

    @property
    def catalog_version(self) -> int:
        return self.view.version

    @property
    def popular(self) -> np.ndarray:
        """The most popular item positions (live counters included), hidden ones among them: cold-start lists."""
        view = self.view
        if view.popular is None:
            count = self.params.max_k + POPULAR_SPARE
            view.popular = view.components["popularity"].retrieve([Request()], count)[0][0] \
                if "popularity" in view.components else np.arange(min(count, len(view.items)))
        return view.popular

    @property
    def view_key(self) -> str:
        return self.view.key

    def set_catalog(self, products: Sequence[Product], version: int) -> None:
        """Rank over the bundle's catalog changed by `products` (the catalog stream's state at `version`) from now
        on. The view is built aside and swapped in whole: a request in flight keeps the one it started with."""
        started = time.perf_counter()
        view = self._rebuild(products=list(products), version=version)
        log.info("catalog updated", extra={"version": version, "added": len(view.added), "hidden": int(view.hidden.sum()),
                                           "ms": round(1000 * (time.perf_counter() - started), 1)})

    def set_live_popularity(self, scores: dict[str, float]) -> None:
        """Add the stream's events since the bundle was built (item id -> weighted count) to the popularity."""
        if scores != self._live_popularity:
            self._live_popularity = dict(scores)
            self._live_version += 1
            self._rebuild()

    def _rebuild(self, products: list[Product] | None = None, version: int | None = None) -> CatalogView:
        with self._rebuild_lock:
            if products is not None:
                self._products = products
            version = self.view.version if version is None else version
            view = build_view(self.base_view, self._products, version, previous=self.view,
                              bm25_average_length=self._bm25_length, live_popularity=self._live_popularity)
            view.key = f"{version}.{self._live_version}"
            self.view = view
        return view

    def _bm25_length(self) -> float:
        if self._bm25_average_length is None:
            self._bm25_average_length = self.base_view.components["bm25"].average_length(self.base_view.items.texts)
        return self._bm25_average_length

    # ------------------------------------------------------------------ ranking
    def history(self, user: str | None) -> tuple[int, ...]:
        return self.histories.get(user, ()) if user else ()

    def rank(self, task: str, request: Request, filters: Filters | None = None) -> Ranked:
        return self.rank_many(task, [request], [filters])[0]

    def rank_many(self, task: str, requests: Sequence[Request],
                  filters: Sequence[Filters | None] | None = None) -> list[Ranked]:
        """The fused lists of several requests of one task. Retrieval (the query encoder, BM25, the ANN
        index) and candidate scoring run once for all of them, and the stack predicts once; each list is
        then fused from its own candidates alone, as rank() would."""
        filters = list(filters) if filters is not None else [None] * len(requests)
        view = self.view  # one catalog for the whole call
        components = {name: view.components[name] for name in self.task_components[task]}
        candidates = fused.pool_candidates(components, requests, self.pool_k, exclude_history=task == "recommend")
        candidates = self._filtered(candidates, filters, view)
        scores = fused.candidate_scores(components, requests, candidates)
        rows = [self._candidate_row(scores, candidates, row) for row in range(len(requests))]
        if self.served[task] == "weighted":
            return [self._weighted(self.fusions[task][0], *row) if row else _no_candidate() for row in rows]
        features = [self._stack_row(view.matchers.get(task), request, components, *row) if row else None
                    for request, row in zip(requests, rows)]
        stacked = [row for row in features if row is not None]
        predictions = iter(np.split(self._predict(task, np.concatenate(stacked)),
                                    np.cumsum([len(row) for row in stacked])[:-1]) if stacked else [])
        return [self._stacked(row[0], row[1], row_features, next(predictions)) if row else _no_candidate()
                for row, row_features in zip(rows, features)]

    @staticmethod
    def _stack_row(matcher, request: Request, components: dict, positions: np.ndarray,
                   component_scores: dict[str, np.ndarray]) -> np.ndarray:
        """One request's stack features, as the fuse stage computed them (ranking.tasks.stack_inputs)."""
        features = fused.stacking_features({name: values[None, :] for name, values in component_scores.items()})[0][0]
        if matcher is not None:
            features = np.concatenate([features, matcher.stack_features([request], positions[None, :], components)[0]],
                                      axis=1)
        return np.asarray(features, dtype=np.float32)

    @staticmethod
    def _filtered(candidates: np.ndarray, filters: Sequence[Filters | None], view: CatalogView) -> np.ndarray:
        """Each row's candidates the request's filters keep, hidden products (removed, out of stock) dropped,
        padded again to one width."""
        if all(chosen is None for chosen in filters) and not view.any_hidden:
            return candidates
        kept = []
        for row, chosen in zip(candidates, filters):
            keep = chosen.mask(view.items, row) if chosen is not None else row != fused.PADDING
            if view.any_hidden:
                keep &= ~view.hidden[np.where(row == fused.PADDING, 0, row)]
            kept.append(row[keep])
        padded = np.full((len(kept), max(1, *(len(row) for row in kept))), fused.PADDING, dtype=np.int64)
        for index, row in enumerate(kept):
            padded[index, :len(row)] = row
        return padded

    @staticmethod
    def _candidate_row(scores: dict[str, np.ndarray], candidates: np.ndarray, row: int):
        """(positions, each component's scores) of one request's candidates, padding dropped; None when none."""
        valid = candidates[row] != fused.PADDING
        if not valid.any():
            return None
        return candidates[row][valid], {name: values[row][valid] for name, values in scores.items()}

    def _predict(self, task: str, features: np.ndarray) -> np.ndarray:
        stacked = self.fusions[task][1]
        return stacked.booster.predict(features, num_iteration=stacked.best_iteration,
                                       num_threads=self.params.encoder_threads)

    @staticmethod
    def _weighted(weighted, positions: np.ndarray, component_scores: dict[str, np.ndarray]) -> Ranked:
        parts = weighted.parts({name: values[None, :] for name, values in component_scores.items()})
        total = sum(parts.values())[0]
        order = np.argsort(-total, kind="stable")
        contributions = [{name: float(part[0][i]) for name, part in parts.items()} for i in order]
        return Ranked(positions[order], total[order], {name: values[order] for name, values in component_scores.items()},
                      contributions=contributions)

    @staticmethod
    def _stacked(positions: np.ndarray, component_scores: dict[str, np.ndarray], features: np.ndarray,
                 predicted: np.ndarray) -> Ranked:
        order = np.argsort(-predicted, kind="stable")
        return Ranked(positions[order], predicted[order], {name: values[order] for name, values in component_scores.items()},
                      stack_features=features[order])

    def relevance(self, task: str, ranked: Ranked, rows: Sequence[int]) -> list[float | None]:
        """The predicted graded relevance of the candidates in `rows` (the fuse stage's relevance model, on the
        judgments' scale); None where the bundle has none for the task or the list was not stacked."""
        model = self.relevance_models.get(task)
        if model is None or ranked.stack_features is None or not len(rows):
            return [None] * len(rows)
        return [round(float(value), 4) for value in model.predict(ranked.stack_features[list(rows)])]

    def contributions(self, task: str, ranked: Ranked, rows: Sequence[int]) -> tuple[list[dict[str, float]], float]:
        """Per component, its part of the fused score of each candidate in `rows`, and the base every score
        shares. LambdaRank: exact Shapley values of each component's group of stacked features, against the
        list's mean candidate (base = the stack's score of that mean candidate): they sum with the base to
        the score, and say how far each component lifts an item above an average candidate of its list."""
        rows = list(rows)
        if ranked.contributions is not None:
            return [ranked.contributions[row] for row in rows], 0.0
        if ranked.stack_features is None or not rows:
            return [{} for _ in rows], 0.0
        names, members = self.stack_groups[task]
        features = ranked.stack_features
        reference = features.mean(axis=0)
        shared = (features == features[0]).all(axis=0)  # the list's user features: exactly, not a float32 mean
        reference[shared] = features[0, shared]
        values, base = group_shapley(lambda stacked: self._predict(task, stacked), features[rows], reference, members)
        return [dict(zip(names, map(float, row))) for row in values], base

    # ------------------------------------------------------------------ answers
    def explanation(self, position: int, parts: dict[str, float], base: float, request: Request,
                    fresh: dict[int, str] | None = None) -> dict:
        """fresh: the user's events from the live stream (item position -> event type), named when a reason
        points at one of them."""
        parts = sorted(parts.items(), key=lambda pair: -pair[1])
        contributions = [Contribution(name, 1.0, value, value) for name, value in parts]
        similarity = getattr(self.components.get("itemcf"), "similarity", None)
        reasons = evidence(position, self.items, request.history, request.query, relations=None, similarity=similarity)
        if fresh:
            reasons = with_fresh_event(reasons, self.items, fresh)
        return {
            "contributions": {name: round(value, 6) for name, value in parts},
            "base": round(base, 6),
            "reasons": [reason.text for reason in reasons],
            "text": sentence(contributions, reasons),
        }

    def item_entry(self, position: int) -> dict:
        return {"item_id": str(self.items.ids[position]), "title": self.items.titles[position],
                "category": self.items.categories[position] or None,
                "price": None if self.items.prices is None or not np.isfinite(self.items.prices[position])
                else float(self.items.prices[position])}

    def search_request(self, query: str, user: str | None, fresh_item_ids: Sequence[str] = ()) -> Request:
        """fresh_item_ids: the user's events from the live stream, oldest first, after the bundle's history."""
        fresh = tuple(int(self.items.position[item]) for item in fresh_item_ids if item in self.items.position)
        return Request(query=query, history=self.history(user) + fresh, user=user)

    def recommend_request(self, user: str | None, context_item_ids: Sequence[str]) -> tuple[Request, list[str]]:
        context = [item for item in context_item_ids if item in self.items.position]
        ignored = [item for item in context_item_ids if item not in self.items.position]
        history = self.history(user) + tuple(int(self.items.position[item]) for item in context)
        return Request(history=history, user=user), ignored

    def cold_start(self, k: int, exclude: Sequence[int] = ()) -> Ranked:
        hidden = self.view.hidden
        excluded = set(exclude) | {int(p) for p in self.popular if hidden[p]}
        positions = np.array([p for p in self.popular if p not in excluded][:k], dtype=np.int64)
        scores = np.linspace(1.0, 0.0, num=max(len(positions), 1))[:len(positions)]
        return Ranked(positions, scores, {"popularity": scores}, contributions=[{"popularity": float(s)} for s in scores],
                      fallback="popularity")

    def similar(self, item_id: str, k: int) -> dict:
        """Complements (bought together: item-CF neighbours) and substitutes (same category, closest text)."""
        view = self.view
        if item_id not in view.items.position or view.hidden[view.items.position[item_id]]:
            return {"complements": [], "substitutes": [], "fallback": "unknown_item",
                    "popular": [self.item_entry(int(p)) for p in self.popular if not view.hidden[p]][:k]}
        position = int(self.items.position[item_id])
        return {"complements": self._complements(position, k), "substitutes": self._substitutes(position, k),
                "fallback": None}

    def _complements(self, position: int, k: int) -> list[dict]:
        itemcf = self.components.get("itemcf")
        if itemcf is None or position >= itemcf.similarity.shape[0]:
            return []
        row = itemcf.similarity.getrow(position)
        order = np.argsort(-row.data, kind="stable")
        hidden = self.view.hidden
        neighbours = [(int(row.indices[i]), float(row.data[i])) for i in order
                      if row.indices[i] != position and not hidden[row.indices[i]]][:k]
        title = self.items.titles[position]
        return [{**self.item_entry(other), "score": round(strength, 5),
                 "reason": f'often bought together with "{title}"'} for other, strength in neighbours]

    def _substitutes(self, position: int, k: int) -> list[dict]:
        dense = self.components.get("dense")
        if dense is None:
            return []
        vector = dense.item_embeddings[position][None, :]
        scores, found = dense.index.search(vector, min(self.params.similar_neighbors, len(self.items)))
        category = self.items.categories[position]
        hidden = self.view.hidden
        picks = [(int(other), float(score)) for other, score in zip(found[0], scores[0])
                 if other >= 0 and other != position and not hidden[other]
                 and (not category or self.items.categories[other] == category)]
        title = self.items.titles[position]
        return [{**self.item_entry(other), "score": round(score, 5),
                 "reason": f'an alternative to "{title}" (same category, similar description)'}
                for other, score in picks[:k]]


def _no_candidate() -> Ranked:
    return Ranked.empty(notes=["no candidate matches the filters"])


def limit_native_threads(threads: int) -> None:
    """Every native thread pool of the worker (OpenBLAS of numpy and scipy, OpenMP of LightGBM and FAISS) at
    `threads`: they default to every core, and with one worker per core a request then spins a second core
    (an exact 55k-item search measured ~4 ms on one thread, ~15 ms on two under load; a /recommend on Office's
    bundle cost 17.9 ms of CPU with numpy's two OpenBLAS threads, 11.7 ms with one, for the same wall time)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # called, not entered: the limits hold for the process
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


class EncoderAdapter:
    """Gives a plain `encode(texts) -> vectors` function the sentence-transformers call shape the
    dense component uses, and remembers recent queries: a request's query is encoded once though
    retrieval and scoring both ask for it."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], remember: int = 1024):
        self._encode = encode
        self._recent: dict[str, np.ndarray] = {}
        self._remember = remember
        self._lock = threading.Lock()

    def encode(self, texts, batch_size=None, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False):
        texts = list(texts)
        with self._lock:
            known = {text: self._recent[text] for text in texts if text in self._recent}
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            vectors = np.asarray(self._encode(missing), dtype=np.float32)
            with self._lock:
                if len(self._recent) + len(missing) > self._remember:
                    self._recent.clear()
                for text, vector in zip(missing, vectors):
                    self._recent[text] = known[text] = vector
        return np.stack([known[text] for text in texts])

    def get_embedding_dimension(self) -> int:
        return int(self._encode(["dimension"]).shape[1])


def pseudonymous_user(user_id: str | None, key: bytes | None) -> str | None:
    """The pseudonym the pipeline gave this user. Every id is hashed, one that looks like a pseudonym too: a
    caller who learnt another user's pseudonym (from a log, a file) gets an unknown user, never that history."""
    if not user_id or key is None:
        return None
    from pipelines.core.privacy import pseudonym

    return pseudonym(user_id, key)


def pii_key(privacy: PrivacyParams) -> bytes | None:
    """The keyed-hash secret of the clean stage (params privacy, packed into the bundle: its env var, or
    SHOPFUSION_PII_KEY_FILE / its key file); None when there is none: the service never makes one, as its
    pseudonyms would match no user of the pipeline."""
    from pipelines.core.privacy import existing_key

    return existing_key(privacy.key_env, os.environ.get("SHOPFUSION_PII_KEY_FILE", privacy.key_file))
