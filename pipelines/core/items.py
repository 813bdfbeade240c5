"""The vocabulary every layer speaks: the catalog as the models see it, a request, and what a model may learn from.

Items are addressed by their position in an `Items` table (0..n-1). A `Request` carries what a
search or a recommendation knows: the query text, the user history (item positions, oldest
first), or both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


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
    candidates: tuple[int, ...] = ()  # given candidates (a source's evaluation protocol); empty: pooled ones


@dataclass
class TrainingData:
    """What a component may learn from. Every frame uses item positions, never raw ids."""

    items: Items
    interactions: pd.DataFrame | None = None  # user, item, timestamp[, weight]; oldest first per user
    judgments: pd.DataFrame | None = None  # query, item, relevance
    relations: pd.DataFrame | None = None  # item, related_item, relation


