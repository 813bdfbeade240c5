"""Popularity: interaction counts weighted by event type, decayed by age; the same list for everyone.

It needs no history, so it is the cold-start answer for any request, and the fallback the other
recommenders blend in where they know nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.core.params import PopularityParams
from pipelines.models.rankers.base import Ranker

log = get_logger(__name__)

SECONDS_PER_DAY = 86400.0


def interaction_weights(interactions: pd.DataFrame, event_weights: dict[str, float]) -> np.ndarray:
    """An explicit `weight` column wins; else the event type's weight; else 1 per interaction."""
    if "weight" in interactions:
        return interactions["weight"].to_numpy(dtype=float)
    if "event_type" in interactions:
        return interactions["event_type"].map(event_weights).fillna(1.0).to_numpy(dtype=float)
    return np.ones(len(interactions))


def age_days(timestamps: pd.Series) -> np.ndarray:
    """Each interaction's age in days, measured from the newest one."""
    moments = pd.to_datetime(timestamps, utc=True)
    return (moments.max() - moments).dt.total_seconds().to_numpy(dtype=np.float64) / SECONDS_PER_DAY


def age_decay(timestamps: pd.Series, half_life_days: float | None) -> np.ndarray:
    """2^(-age / half-life), age measured from the newest interaction of the training data."""
    if half_life_days is None or len(timestamps) == 0:
        return np.ones(len(timestamps))
    return np.exp2(-age_days(timestamps) / half_life_days)


class Popularity(Ranker):
    name = "popularity"

    def __init__(self, params: PopularityParams):
        self.params = params
        self.popularity = np.zeros(0, dtype=np.float32)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Popularity":
        return cls(settings.recall.popularity)

    def fit(self, data: TrainingData) -> "Popularity":
        self.n_items = len(data.items)
        interactions = data.interactions if data.interactions is not None else pd.DataFrame(columns=["item"])
        weights = interaction_weights(interactions, self.params.event_weights)
        if "timestamp" in interactions:
            weights = weights * age_decay(interactions["timestamp"], self.params.half_life_days)
        items = interactions["item"].to_numpy(dtype=np.int64)
        self.popularity = np.bincount(items, weights=weights, minlength=self.n_items).astype(np.float32)
        log.info("popularity fitted", extra={"items": self.n_items, "interactions": len(interactions),
                                             "items_seen": int((self.popularity > 0).sum())})
        return self

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        if candidates.ndim == 1:
            candidates = np.broadcast_to(candidates, (len(requests), len(candidates)))
        return self.popularity[candidates]

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(requests), self.n_items))

    def ranking(self) -> np.ndarray:
        """Every item position, most popular first (ties by position); sorted once, not per request."""
        cached = getattr(self, "_ranking", None)
        if cached is None or cached[0] is not self.popularity:
            cached = (self.popularity, np.argsort(-self.popularity, kind="stable"))
            self._ranking = cached
        return cached[1]

    def retrieve(self, requests: Sequence[Request], k: int, exclude_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The same top-k for everyone (minus each user's history when asked): read off the sorted ranking
        instead of partitioning the whole catalog per request."""
        ranking = self.ranking()
        width = min(k, self.n_items)
        top_items = np.empty((len(requests), width), dtype=np.int64)
        top_scores = np.empty((len(requests), width), dtype=np.float32)
        for row, request in enumerate(requests):
            seen = set(request.history) if exclude_history else set()
            head = ranking[:width + len(seen)]
            kept = [item for item in head.tolist() if item not in seen][:width]
            dropped = [] if len(kept) == width else \
                [item for item in ranking.tolist() if item in seen][:width - len(kept)]  # a tiny catalog
            top_items[row] = kept + dropped
            top_scores[row] = np.concatenate([self.popularity[kept], np.full(len(dropped), -np.inf)])
        return top_items, top_scores
