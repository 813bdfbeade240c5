"""The catalog as it changes between trainings (issue #18): products added, repriced, out of stock or removed.

A bundle's models know the items they were trained on (positions 0..n-1). A product added after training
gets the next free position (base + its sequence number, assigned once by the catalog stream, so every
worker and replica agrees), and each component answers for it what it can know:
- the text components score it with the index they were trained with: BM25 with the index's document
  frequencies (BM25.score_texts), dense with the serving encoder's embedding of its text;
- a component that learned from behaviour (popularity, item-CF, relations, SASRec) knows nothing of it and
  scores it 0, as it scores a trained item it never met;
- the matchers' per-item features are extended the same way (title features from its title, history
  features as for an item never met).
So the fitted fusion ranks a new product on the same features as any other. Positions never move: a later
catalog only appends, so a list ranked on one catalog is explained on a later one. A hidden product
(removed, or stock 0) keeps its position and is masked out of every answer.

The trained text of a trained item stays what its models indexed until the next training; its price,
stock and displayed title follow the updates at once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.core.items import Items, Request
from pipelines.models.rankers.base import Ranker

TEXT_COMPONENTS = ("bm25", "dense")


@dataclass(frozen=True)
class Product:
    """One product's current state, as the catalog stream holds it (pipelines/serving/catalog.py)."""

    item_id: str
    sequence: int  # 1, 2, ... in the order the stream first saw each item_id
    title: str = ""
    description: str = ""
    category: str = ""
    brand: str = ""
    price: float | None = None
    stock: int | None = None  # None: not tracked (always shown)
    removed: bool = False

    @property
    def text(self) -> str:
        """What text models read, joined as Items.from_catalog joins the catalog's fields."""
        return " | ".join(part for part in (self.title, self.category, self.brand, self.description) if part)

    @property
    def hidden(self) -> bool:
        return self.removed or self.stock == 0


@dataclass
class CatalogView:
    """The items, components and matchers one request ranks with; replaced whole, never changed in place."""

    items: Items
    n_base: int
    hidden: np.ndarray  # bool per position
    components: dict[str, Ranker]
    matchers: dict[str, object]
    version: int = 0  # the catalog stream's
    key: str = "0"  # what a cached list was ranked with: the catalog's version and the live popularity's
    added: list[str] = field(default_factory=list)  # the added products' ids, in position order (after n_base)
    memo: dict = field(default_factory=dict)  # (item_id, text) -> embedding / tokens, reused by the next view
    popular: np.ndarray | None = None  # the most popular positions (cold start), computed on first use

    @property
    def any_hidden(self) -> bool:
        return bool(self.hidden.any())


def base_view(items: Items, components: dict[str, Ranker], matchers: dict[str, object]) -> CatalogView:
    return CatalogView(items, len(items), np.zeros(len(items), dtype=bool), components, matchers)


def build_view(base: CatalogView, products: Sequence[Product], version: int, previous: CatalogView | None = None,
               bm25_average_length: Callable[[], float] | None = None,
               live_popularity: Mapping[str, float] | None = None) -> CatalogView:
    """The catalog `products` describe on top of the bundle's (`base`), with the live popularity scores (item id
    -> score) added to the popularity component's. previous: the view this one replaces, whose embeddings and
    tokens of unchanged products are reused."""
    known = {product.item_id: product for product in products if product.item_id in base.items.position}
    added = sorted((product for product in products if product.item_id not in base.items.position),
                   key=lambda product: product.sequence)
    slots = max((product.sequence for product in added), default=0)
    by_slot = {product.sequence - 1: product for product in added}
    new = [by_slot.get(slot) for slot in range(slots)]  # a sequence number never used stays an empty, hidden slot
    items = _items(base.items, known, new)
    hidden = np.concatenate([base.hidden, np.ones(slots, dtype=bool)])
    for item_id, product in known.items():
        hidden[base.items.position[item_id]] = product.hidden
    for slot, product in enumerate(new):
        hidden[base.n_base + slot] = product is None or product.hidden
    view = CatalogView(items, base.n_base, hidden, base.components, base.matchers, version,
                       added=[product.item_id if product else "" for product in new])
    if slots:
        texts = [product.text if product else "" for product in new]
        titles = [product.title if product else "" for product in new]
        memo = previous.memo if previous is not None else {}
        view.components = _extended_components(base, texts, memo, view.memo, bm25_average_length)
        view.matchers = {task: matcher.extended(titles) for task, matcher in base.matchers.items()}
    if live_popularity and "popularity" in base.components:
        view.components = {**view.components,
                           "popularity": with_live_popularity(base.components["popularity"], items, live_popularity)}
    return view


def _items(base: Items, known: Mapping[str, Product], new: Sequence[Product | None]) -> Items:
    titles = list(base.titles)
    prices = np.array(base.prices, dtype=float) if base.prices is not None else np.full(len(base), np.nan)
    for item_id, product in known.items():
        position = base.position[item_id]
        titles[position] = product.title or titles[position]
        if product.price is not None:
            prices[position] = product.price
    empty = Product("", 0)
    filled = [product or empty for product in new]
    ids = np.concatenate([base.ids.astype(object), np.array([p.item_id or f"\x00slot{i}" for i, p in enumerate(filled)],
                                                            dtype=object)])
    return Items(ids, titles + [p.title for p in filled], list(base.texts) + [p.text for p in filled],
                 list(base.categories or [""] * len(base)) + [p.category for p in filled],
                 list(base.brands or [""] * len(base)) + [p.brand for p in filled],
                 np.concatenate([prices, [np.nan if p.price is None else p.price for p in filled]]))


def _extended_components(base: CatalogView, texts: list[str], old_memo: dict, memo: dict,
                         bm25_average_length: Callable[[], float] | None) -> dict[str, Ranker]:
    n_items = base.n_base + len(texts)
    components = {}
    for name, component in base.components.items():
        if name == "bm25":
            tokens = _memoized(old_memo, memo, "bm25", texts, component.tokens)
            average = bm25_average_length() if bm25_average_length else component.average_length(base.items.texts)
            components[name] = AddedByText(component, base.n_base, n_items, BM25Added(component, tokens, average))
        elif name == "dense":
            embeddings = np.asarray(_memoized(old_memo, memo, "dense", texts, component.encode), dtype=np.float32)
            components[name] = AddedDense(component, base.n_base, n_items, embeddings)
        else:
            components[name] = KnownItemsOnly(component, base.n_base, n_items)
    return components


def _memoized(old: dict, memo: dict, kind: str, texts: list[str], compute: Callable[[list[str]], Sequence]) -> list:
    """compute(texts) of the texts the previous view did not already compute."""
    missing = list(dict.fromkeys(text for text in texts if (kind, text) not in old))
    for text, value in zip(missing, compute(missing) if missing else []):
        old[(kind, text)] = value
    for text in texts:
        memo[(kind, text)] = old[(kind, text)]
    return [memo[(kind, text)] for text in texts]


# ---------------------------------------------------------------- components over an extended catalog

class KnownItemsOnly(Ranker):
    """A trained component over the extended catalog: an added product scores 0 (nothing learned of it) and
    leaves every history it is in (the component's tables end at the trained items)."""

    def __init__(self, base: Ranker, n_base: int, n_items: int):
        self.base, self.n_base, self.n_items, self.name = base, n_base, n_items, base.name

    def __getattr__(self, name):  # what the matchers and explanations read (kinds, params, ...)
        return getattr(self.base, name)

    def fit(self, data):
        raise TypeError("a catalog view is never fitted: the bundle's component is")

    def known(self, requests: Sequence[Request]) -> list[Request]:
        return [request if all(item < self.n_base for item in request.history)
                else Request(request.query, tuple(item for item in request.history if item < self.n_base),
                             request.user, request.candidates) for request in requests]

    def _over_known(self, method, requests: Sequence[Request], candidates: np.ndarray, added_value: float = 0.0):
        candidates = np.asarray(candidates)
        added = candidates >= self.n_base
        result = method(self.known(requests), np.where(added, 0, candidates))
        if isinstance(result, dict):
            return {key: np.where(added, added_value, np.asarray(value, dtype=np.float64)) for key, value in result.items()}
        return np.where(added, added_value, np.asarray(result, dtype=np.float64))

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        return self._over_known(self.base.score, requests, candidates)

    def kind_scores(self, requests: Sequence[Request], candidates: np.ndarray) -> dict[str, np.ndarray]:
        return self._over_known(self.base.kind_scores, requests, candidates)

    def retrieve(self, requests: Sequence[Request], k: int, exclude_history: bool = False):
        return self.base.retrieve(self.known(requests), k, exclude_history=exclude_history)

    @property
    def similarity(self):
        """Item-CF's item x item table, with empty rows and columns for the added products."""
        resized = self.__dict__.get("_similarity")
        if resized is None:
            resized = self.base.similarity.copy()
            resized.resize((self.n_items, self.n_items))
            self.__dict__["_similarity"] = resized
        return resized


class BM25Added:
    """BM25 scores of the added products, with the trained index's statistics."""

    def __init__(self, bm25, tokens: list[list[str]], average_length: float):
        self.bm25, self.tokens, self.average_length = bm25, tokens, average_length

    def __call__(self, requests: Sequence[Request]) -> np.ndarray:
        return np.stack([self.bm25.score_texts(request.query, self.tokens, self.average_length)
                         for request in requests]) if requests else np.zeros((0, len(self.tokens)))


class AddedByText(KnownItemsOnly):
    """A text component over the extended catalog: added products get real scores (`added_scores`), and
    retrieval merges the best of them with the trained index's top-k by score."""

    def __init__(self, base: Ranker, n_base: int, n_items: int, added_scores: Callable[[Sequence[Request]], np.ndarray]):
        super().__init__(base, n_base, n_items)
        self.added_scores = added_scores

    def known(self, requests: Sequence[Request]) -> list[Request]:
        return list(requests)  # text reads the query; a dense history reads the extended embeddings (AddedDense)

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        added = candidates >= self.n_base
        scores = np.asarray(self.base.score(requests, np.where(added, 0, candidates)), dtype=np.float64)
        if added.any():
            extra = self.added_scores(requests)
            rows = np.broadcast_to(np.arange(len(requests))[:, None], candidates.shape) if candidates.ndim == 2 else 0
            scores = np.where(added, extra[rows, np.where(added, candidates - self.n_base, 0)], scores)
        return scores

    # a product added after training joins a retrieved list only with a positive score: a text that shares no
    # query term is no candidate (BM25); every added product has a similarity (dense)
    positive_only = True

    def retrieval_requests(self, requests: Sequence[Request]) -> list[Request]:
        return list(requests)

    def retrieve(self, requests: Sequence[Request], k: int, exclude_history: bool = False):
        """The trained index's top-k merged with the added products by score, k kept."""
        top_items, top_scores = self.base.retrieve(self.retrieval_requests(requests), k, exclude_history=exclude_history)
        extra = np.asarray(self.added_scores(requests), dtype=np.float32)
        if not extra.size:
            return top_items, top_scores
        merged_items, merged_scores = top_items.copy(), top_scores.copy()
        for row, request in enumerate(requests):
            added = self.n_base + (np.flatnonzero(extra[row] > 0) if self.positive_only else np.arange(extra.shape[1]))
            if exclude_history:
                added = added[~np.isin(added, request.history)]
            items = np.concatenate([top_items[row], added])
            scores = np.concatenate([top_scores[row], extra[row][added - self.n_base]])
            order = np.argsort(-scores, kind="stable")[:top_items.shape[1]]
            merged_items[row], merged_scores[row] = items[order], scores[order]
        return merged_items, merged_scores


class AddedDense(AddedByText):
    """The dense component over the extended catalog: the added products' embeddings (by the serving encoder)
    after the trained ones; histories and scores read both."""

    positive_only = False

    def __init__(self, base: Ranker, n_base: int, n_items: int, added_embeddings: np.ndarray):
        super().__init__(base, n_base, n_items, self._added_scores)
        self.item_embeddings = np.concatenate([base.item_embeddings, added_embeddings.reshape(-1, base.item_embeddings.shape[1])])

    def retrieval_requests(self, requests: Sequence[Request]) -> list[Request]:
        return KnownItemsOnly.known(self, requests)  # the trained index holds the trained items alone

    def request_vectors(self, requests: Sequence[Request]) -> np.ndarray:
        vectors = self.base.request_vectors(KnownItemsOnly.known(self, requests))
        for row, request in enumerate(requests):  # a history with an added product: from the extended table
            if not request.query and any(item >= self.n_base for item in request.history):
                vectors[row] = self.base.history_vector(request.history, self.item_embeddings)
        return vectors

    def _added_scores(self, requests: Sequence[Request]) -> np.ndarray:
        return self.request_vectors(requests) @ self.item_embeddings[self.n_base:].T

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        return np.einsum("rd,rcd->rc", self.request_vectors(requests), self.item_embeddings[np.asarray(candidates)])


def with_live_popularity(popularity: Ranker, items: Items, live_scores: Mapping[str, float]) -> Ranker:
    """The popularity component with the stream's events since the bundle was built added to the ones it
    learned, as if they had been training interactions (the newest ones: no decay), over the whole catalog
    (an added product gets its live score alone)."""
    blended = copy.copy(popularity)
    scores = np.zeros(len(items), dtype=np.float32)
    scores[:len(popularity.popularity)] = popularity.popularity
    for item_id, score in live_scores.items():
        position = items.position.get(item_id)
        if position is not None:
            scores[position] += score
    blended.popularity, blended.n_items = scores, len(items)
    blended.__dict__.pop("_ranking", None)  # sorted again for the new scores, on first use
    return blended
