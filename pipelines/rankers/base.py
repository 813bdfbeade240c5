"""The one interface every recall component implements: fit; score given candidates; retrieve top-K.

Items are addressed by their position in an `Items` table (0..n-1). A `Request` carries what a
search or a recommendation knows: the query text, the user's history (item positions, oldest
first), or both. Components ignore what they cannot use (BM25 ignores history, item-CF ignores
the query) and return 0 for it, so any component can score any request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SCORE_BATCH = 256


@dataclass
class Items:
    """The catalog as the models see it: ids and the text fields, in one fixed order."""

    ids: np.ndarray
    titles: list[str]
    texts: list[str]  # title, category, brand and description joined: what text models read
    categories: list[str] = field(default_factory=list)
    brands: list[str] = field(default_factory=list)
    prices: np.ndarray | None = None

    def __post_init__(self):
        self.position = {item_id: position for position, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_catalog(cls, catalog: pd.DataFrame) -> "Items":
        def column(name):
            return catalog[name].fillna("").astype(str).tolist() if name in catalog else [""] * len(catalog)

        titles, categories, brands, descriptions = column("title"), column("category"), column("brand"), column("description")
        texts = [" | ".join(part for part in parts if part) for parts in zip(titles, categories, brands, descriptions)]
        prices = catalog["price"].to_numpy(dtype=float) if "price" in catalog else None
        return cls(catalog["item_id"].astype(str).to_numpy(), titles, texts, categories, brands, prices)

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """Positions of known ids; unknown ids are dropped."""
        return np.array([self.position[i] for i in item_ids if i in self.position], dtype=np.int64)


@dataclass(frozen=True)
class Request:
    query: str | None = None
    history: tuple[int, ...] = ()
    user: str | None = None


@dataclass
class TrainingData:
    """What a component may learn from. Every frame uses item positions, never raw ids."""

    items: Items
    interactions: pd.DataFrame | None = None  # user, item, timestamp[, weight]; oldest first per user
    judgments: pd.DataFrame | None = None  # query, item, relevance
    relations: pd.DataFrame | None = None  # item, related_item, relation


class Ranker(ABC):
    """A recall component. Subclasses set `name` and implement fit and score."""

    name: str = "ranker"

    @abstractmethod
    def fit(self, data: TrainingData) -> "Ranker":
        ...

    @abstractmethod
    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        """Scores of candidates (item positions, shape [n_requests, n_candidates]); higher is better."""

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        """Scores of every item for each request, shape [n_requests, n_items]. Override when faster."""
        everything = np.broadcast_to(np.arange(self.n_items), (len(requests), self.n_items))
        return self.score(requests, everything)

    def retrieve(self, requests: Sequence[Request], k: int, exclude_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item positions and their scores for each request, best first."""
        top_items, top_scores = [], []
        for start in range(0, len(requests), SCORE_BATCH):
            batch = requests[start:start + SCORE_BATCH]
            scores = np.asarray(self.score_all(batch), dtype=np.float32).copy()
            if exclude_history:
                for row, request in enumerate(batch):
                    scores[row, list(request.history)] = -np.inf
            kk = min(k, scores.shape[1])
            part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
            chosen = np.take_along_axis(part, order, axis=1)
            top_items.append(chosen)
            top_scores.append(np.take_along_axis(scores, chosen, axis=1))
        return np.vstack(top_items), np.vstack(top_scores)

    @property
    def n_items(self) -> int:
        return self._n_items

    @n_items.setter
    def n_items(self, value: int) -> None:
        self._n_items = value

    def save(self, folder: Path) -> None:
        """Default persistence: the fitted object pickled with joblib. Torch models override."""
        import joblib

        Path(folder).mkdir(parents=True, exist_ok=True)
        joblib.dump(self, Path(folder) / f"{self.name}.joblib")

    @classmethod
    def load(cls, folder: Path) -> "Ranker":
        import joblib

        return joblib.load(Path(folder) / f"{cls.name}.joblib")
