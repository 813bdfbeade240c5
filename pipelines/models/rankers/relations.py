"""Relations: a candidate scores by how it relates to the items in the request's history.

Explicit item relations (TrainingData.relations: complement and substitute lists, e.g. Amazon's
"bought together" and "viewed instead") count in both directions: the candidate in a history
item's list ("forward") and a history item in the candidate's list ("backward"). Shared category
and shared brand are weaker relations every catalog with those fields has, so a shop without
relation lists still gets a score. Each history item weighs decay ** (its age in steps), the newest 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.config import Settings
from pipelines.core.items import Items, Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.core.params import RelationsParams
from pipelines.models.rankers.base import Ranker, memo_last

log = get_logger(__name__)

SCORE_BATCH = 512


def relation_matrices(items: Items, relations: pd.DataFrame | None) -> dict[str, sp.csr_matrix]:
    """One item x item 0/1 matrix per kind: <relation> (row item lists column item), its transpose
    <relation>_backward, and category / brand (items sharing a non-empty value, self pairs included)."""
    n_items = len(items)
    matrices: dict[str, sp.csr_matrix] = {}
    if relations is not None and len(relations):
        for kind, group in relations.groupby("relation"):
            rows, cols = group["item"].to_numpy(np.int64), group["related_item"].to_numpy(np.int64)
            keep = (rows >= 0) & (rows < n_items) & (cols >= 0) & (cols < n_items)
            forward = sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])), shape=(n_items, n_items))
            forward.data[:] = 1.0  # repeated pairs count once
            matrices[str(kind)] = forward
            matrices[f"{kind}_backward"] = forward.T.tocsr()
    for kind, values in (("category", items.categories), ("brand", items.brands)):
        membership = _membership(values, n_items)
        if membership is not None:
            matrices[kind] = membership
    return matrices


def _membership(values: Sequence[str], n_items: int) -> sp.csr_matrix | None:
    """Item x value one-hot (items without a value have an empty row); None when nobody has one."""
    if len(values) != n_items:
        return None
    series = pd.Series(list(values), dtype=object)
    codes, distinct = pd.factorize(series.where(series != "", None))
    known = codes >= 0
    if not known.any():
        return None
    return sp.csr_matrix((np.ones(known.sum(), np.float32), (np.flatnonzero(known), codes[known])),
                         shape=(n_items, len(distinct)))


class Relations(Ranker):
    name = "relations"

    def __init__(self, params: RelationsParams):
        self.params = params
        self.matrices: dict[str, sp.csr_matrix] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "Relations":
        return cls(settings.relations)

    @property
    def kinds(self) -> list[str]:
        """The kinds of relation this fit found, in a fixed order."""
        return sorted(self.matrices)

    def fit(self, data: TrainingData) -> "Relations":
        self.n_items = len(data.items)
        self.matrices = relation_matrices(data.items, data.relations)
        log.info("relations fitted", extra={"items": self.n_items,
                                            "kinds": {kind: int(m.nnz) for kind, m in self.matrices.items()}})
        return self

    def history_matrix(self, requests: Sequence[Request]) -> sp.csr_matrix:
        """Requests x items: the latest history items, weighted by recency (repeats add up)."""
        rows, cols, values = [], [], []
        for row, request in enumerate(requests):
            history = np.asarray(request.history[-self.params.history_items:], dtype=np.int64)
            history = history[(history >= 0) & (history < self.n_items)]
            rows.append(np.full(len(history), row))
            cols.append(history)
            values.append(self.params.recency_decay ** np.arange(len(history))[::-1])
        if not requests:
            return sp.csr_matrix((0, self.n_items), dtype=np.float32)
        return sp.csr_matrix((np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(requests), self.n_items))

    def kind_scores_all(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:
        """Per kind, requests x items: the recency-weighted count of history items so related. The arrays are
        read-only: the thread's last result is reused (retrieve, score and the history features ask alike)."""
        params = self.params
        key = (params.history_items, params.recency_decay,
               tuple(tuple(request.history[-params.history_items:]) for request in requests))
        kinds = memo_last(self, (self.matrices,), key, len(requests) * self.n_items * max(len(self.matrices), 1),
                          lambda: self._kind_scores_all(requests))
        return dict(kinds)

    def _kind_scores_all(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:
        history = self.history_matrix(requests)
        out = {}
        for kind, matrix in self.matrices.items():
            if kind in ("category", "brand"):  # item x value membership: share a value
                out[kind] = ((history @ matrix) @ self._transposed(kind, matrix)).toarray()
            else:
                out[kind] = (history @ matrix).toarray()
            out[kind].setflags(write=False)
        return out

    def _transposed(self, kind: str, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """matrix.T as CSR, converted once (the product would convert the CSC transpose on every call); derived
        state, not pickled (Ranker.__getstate__)."""
        derived = self.__dict__.get("_derived") or self.__dict__.setdefault("_derived", {})
        kept = derived.get(kind)
        if kept is None or kept[0] is not matrix:
            kept = derived[kind] = (matrix, matrix.T.tocsr())
        return kept[1]

    def kind_scores(self, requests: Sequence[Request], candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Per kind, requests x candidates (the features a learned fusion reads)."""
        candidates = _per_request(candidates, len(requests))
        out = {kind: np.zeros(candidates.shape, dtype=np.float32) for kind in self.kinds}
        for start in range(0, len(requests), SCORE_BATCH):
            batch = slice(start, start + SCORE_BATCH)
            for kind, full in self.kind_scores_all(requests[batch]).items():
                out[kind][batch] = np.take_along_axis(full, candidates[batch], axis=1)
        return out

    def _combine(self, kind_scores: dict[str, np.ndarray]) -> np.ndarray:
        total = None
        for kind, values in kind_scores.items():
            weighted = self.params.weights.get(kind, 0.0) * values
            total = weighted if total is None else total + weighted
        return total

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = _per_request(candidates, len(requests))
        if not self.matrices:
            return np.zeros(candidates.shape, dtype=np.float32)
        return self._combine(self.kind_scores(requests, candidates)).astype(np.float32)

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        if not self.matrices:
            return np.zeros((len(requests), self.n_items), dtype=np.float32)
        return self._combine(self.kind_scores_all(requests)).astype(np.float32)


def _per_request(candidates: np.ndarray, n_requests: int) -> np.ndarray:
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim == 1:
        candidates = np.broadcast_to(candidates, (n_requests, len(candidates)))
    return candidates
