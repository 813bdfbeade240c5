"""Item-CF: item-item cosine over co-occurrence in user histories, scored against the request's history.

Two items co-occur when one user interacted with both, optionally only within `window` steps of
each other in that user's sequence (closer pairs count more with `distance_decay`). Each user's
pairs are damped by the length of their history so heavy users do not dominate. The similarity
matrix is sparse and keeps each item's `neighbors` best; a request's score is its decayed history
vector times that matrix, so score_all is one sparse product per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.core.params import ItemCFParams, PopularityParams
from pipelines.models.rankers.base import Ranker, memo_last
from pipelines.models.rankers.popularity import Popularity

log = get_logger(__name__)


def user_sequences(interactions: pd.DataFrame) -> list[np.ndarray]:
    """Each user's item positions, oldest first (the frame is already oldest first per user)."""
    if interactions is None or interactions.empty:
        return []
    return [group.to_numpy(dtype=np.int64) for _, group in interactions.groupby("user", sort=False)["item"]]


def _pairs_within(sequence: np.ndarray, window: int | None, distance_decay: float):
    """Ordered pairs (a, b, weight) of one sequence, both directions, self pairs left out."""
    length = len(sequence)
    reach = length - 1 if window is None else min(window, length - 1)
    for offset in range(1, reach + 1):
        left, right = sequence[:-offset], sequence[offset:]
        weight = distance_decay ** (offset - 1)
        yield left, right, weight
        yield right, left, weight


def cooccurrence(sequences: list[np.ndarray], n_items: int, params: ItemCFParams) -> sp.csr_matrix:
    rows, cols, values = [], [], []
    for sequence in sequences:
        if len(sequence) < 2:
            continue
        damping = 1.0 / len(sequence) ** params.user_damping
        for left, right, weight in _pairs_within(sequence, params.window, params.distance_decay):
            rows.append(left)
            cols.append(right)
            values.append(np.full(len(left), weight * damping))
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    matrix = sp.coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n_items, n_items)).tocsr()
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    return matrix


def cosine(matrix: sp.csr_matrix, item_counts: np.ndarray) -> sp.csr_matrix:
    """Co-occurrence over sqrt(count_a * count_b)."""
    inverse_norm = 1.0 / np.sqrt(np.maximum(item_counts, 1.0))
    scale = sp.diags(inverse_norm)
    return (scale @ matrix @ scale).tocsr()


def keep_top_neighbors(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row."""
    matrix = matrix.tocsr()
    rows, cols, values = [], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        row_cols, row_values = matrix.indices[start:end], matrix.data[start:end]
        if len(row_values) > k:
            best = np.argpartition(-row_values, k - 1)[:k]
            row_cols, row_values = row_cols[best], row_values[best]
        rows.append(np.full(len(row_cols), row))
        cols.append(row_cols)
        values.append(row_values)
    return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                         shape=matrix.shape, dtype=np.float32)


class ItemCF(Ranker):
    name = "itemcf"

    def __init__(self, params: ItemCFParams, popularity: PopularityParams):
        self.params = params
        self.fallback = Popularity(popularity)
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)
        self.prior = np.zeros(0, dtype=np.float32)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ItemCF":
        return cls(settings.recall.itemcf, settings.recall.popularity)

    def fit(self, data: TrainingData) -> "ItemCF":
        self.n_items = len(data.items)
        sequences = user_sequences(data.interactions)
        item_counts = np.bincount(np.concatenate(sequences), minlength=self.n_items) if sequences else np.zeros(self.n_items)
        raw = cooccurrence(sequences, self.n_items, self.params)
        self.similarity = keep_top_neighbors(cosine(raw, item_counts.astype(float)), self.params.neighbors)
        popularity = self.fallback.fit(data).popularity
        top = float(popularity.max()) if len(popularity) and popularity.max() > 0 else 1.0
        self.prior = (self.params.popularity_blend * popularity / top).astype(np.float32)
        log.info("item-cf fitted", extra={"items": self.n_items, "users": len(sequences),
                                          "similarities": int(self.similarity.nnz)})
        return self

    def history_matrix(self, requests: Sequence[Request]) -> sp.csr_matrix:
        """One row per request: its last max_history items, the newest weighing 1, older ones decayed."""
        rows, cols, values = [], [], []
        for row, request in enumerate(requests):
            history = np.asarray(request.history[-self.params.max_history:], dtype=np.int64)
            history = history[(history >= 0) & (history < self.n_items)]
            ages = np.arange(len(history))[::-1]
            rows.append(np.full(len(history), row))
            cols.append(history)
            values.append(self.params.history_decay ** ages)
        if not rows:
            return sp.csr_matrix((0, self.n_items), dtype=np.float32)
        return sp.csr_matrix((np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(requests), self.n_items), dtype=np.float32)

    def _history_scores(self, requests: Sequence[Request]) -> np.ndarray:
        """requests x items: history x similarity, read-only; the thread's last result is reused (retrieve, then
        score, ask alike)."""
        key = (self.params.max_history, self.params.history_decay,
               tuple(tuple(request.history[-self.params.max_history:]) for request in requests))

        def compute() -> np.ndarray:
            full = (self.history_matrix(requests) @ self.similarity).toarray()
            full.setflags(write=False)
            return full

        return memo_last(self, (self.similarity,), key, len(requests) * self.n_items, compute)

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        scores = self._history_scores(requests).astype(np.float32)
        return scores + self.prior[None, :]

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        if candidates.ndim == 1:
            candidates = np.broadcast_to(candidates, (len(requests), len(candidates)))
        scores = np.empty(candidates.shape, dtype=np.float32)
        for start in range(0, len(requests), 256):
            batch = slice(start, start + 256)
            full = self._history_scores(requests[batch])
            scores[batch] = np.take_along_axis(full, candidates[batch], axis=1) + self.prior[candidates[batch]]
        return scores
