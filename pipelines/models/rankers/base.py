"""The one interface every recall component implements: fit; score given candidates; retrieve top-K.

Items are addressed by their position in an `Items` table (0..n-1). A `Request` carries what a
search or a recommendation knows: the query text, the user's history (item positions, oldest
first), or both. Components ignore what they cannot use (BM25 ignores history, item-CF ignores
the query) and return 0 for it, so any component can score any request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.core.items import Request, TrainingData

SCORE_BATCH = 256


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
