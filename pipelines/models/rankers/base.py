"""The one interface every recall component implements: fit; score given candidates; retrieve top-K.

Items are addressed by their position in an `Items` table (0..n-1). A `Request` carries what a
search or a recommendation knows: the query text, the user's history (item positions, oldest
first), or both. Components ignore what they cannot use (BM25 ignores history, item-CF ignores
the query) and return 0 for it, so any component can score any request.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.items import Request, TrainingData

SCORE_BATCH = 256
MEMO_MAX_VALUES = 1 << 22  # a result with more scores (requests x items) than this is never kept


def memo_last(owner: object, sources: tuple, key: Any, size: int, compute: Callable[[], Any]) -> Any:
    """compute(), or what it returned on this thread's last call for `owner` with the same `key` and the very same
    `sources` (the fitted tables it read, compared by identity). A request asks a component twice (retrieve its
    candidates, then score them) and the history features ask again: each costs one computation. Kept per
    thread (threading.local, never pickled: see Ranker.__getstate__), one result, and only when `size` (the
    result's score count) is at most MEMO_MAX_VALUES. The caller must not change what it gets back."""
    if size > MEMO_MAX_VALUES:
        return compute()
    memo = owner.__dict__.get("_memo") or owner.__dict__.setdefault("_memo", threading.local())
    last = getattr(memo, "last", None)
    if last is not None and len(last[0]) == len(sources) and all(a is b for a, b in zip(last[0], sources)) \
            and last[1] == key:
        return last[2]
    value = compute()
    memo.last = (sources, key, value)
    return value


def histories_key(requests: Sequence["Request"]) -> tuple:
    """What a history-only component reads of the requests (the memo key of memo_last)."""
    return tuple(tuple(request.history) for request in requests)


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

    def __getstate__(self) -> dict:  # a per-thread memo (memo_last) and derived tables are not pickled or copied
        return {key: value for key, value in self.__dict__.items() if key not in ("_memo", "_derived")}

    def save(self, folder: Path) -> None:
        """Default persistence: the fitted object pickled with joblib. Torch models override."""
        import joblib

        Path(folder).mkdir(parents=True, exist_ok=True)
        joblib.dump(self, Path(folder) / f"{self.name}.joblib")

    @classmethod
    def load(cls, folder: Path) -> "Ranker":
        import joblib

        return joblib.load(Path(folder) / f"{cls.name}.joblib")
