"""BM25 over the items' text (bm25s), with optional stemming and stopword removal.

Requests without a query score 0 for every item. Scores are exact (no top-N truncation): bm25s
keeps a sparse term x document matrix, so one query costs a few sparse column sums.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.params import BM25Params
from pipelines.models.rankers.base import Ranker

TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return _stemmer().stem(word)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


@lru_cache(maxsize=1)
def english_stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str, stemming: bool = True, stopwords: bool = True) -> list[str]:
    """Lowercased word tokens of two characters or more, without stopwords, stemmed."""
    tokens = TOKEN_PATTERN.findall(text.lower())
    if stopwords:
        stop = english_stopwords()
        tokens = [token for token in tokens if token not in stop]
    if stemming:
        tokens = [stem(token) for token in tokens]
    return tokens


class BM25(Ranker):
    name = "bm25"

    def __init__(self, params: BM25Params):
        self.params = params
        self.model = None
        self.n_items = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> "BM25":
        return cls(settings.text.bm25)

    def _tokens(self, text: str) -> list[str]:
        return tokenize(text, self.params.stemming, self.params.stopwords)

    def fit(self, data: TrainingData) -> "BM25":
        import bm25s

        documents = getattr(data.items, self.params.field)
        corpus = [self._tokens(text) or ["<empty>"] for text in documents]
        self.model = bm25s.BM25(k1=self.params.k1, b=self.params.b, method=self.params.method)
        self.model.index(corpus, show_progress=False)
        self.n_items = len(documents)
        return self

    def _scores_one(self, query: str | None) -> np.ndarray:
        """Every item's score; the last query's scores are kept per thread, since one request asks twice
        (retrieve, then score its candidates). Read-only: callers index or copy it."""
        memo = self.__dict__.get("_memo") or self.__dict__.setdefault("_memo", threading.local())
        if getattr(memo, "query", None) == query and getattr(memo, "scores", None) is not None:
            return memo.scores
        scores = self._compute_scores(query)
        scores.setflags(write=False)
        memo.query, memo.scores = query, scores
        return scores

    def __getstate__(self) -> dict:  # the per-thread memo is not pickled with the fitted model
        return {key: value for key, value in self.__dict__.items() if key != "_memo"}

    def _compute_scores(self, query: str | None) -> np.ndarray:
        if not query:
            return np.zeros(self.n_items, dtype=np.float32)
        vocabulary = self.model.vocab_dict
        tokens = [token for token in self._tokens(query) if token in vocabulary]
        if not tokens:
            return np.zeros(self.n_items, dtype=np.float32)
        return np.asarray(self.model.get_scores(tokens), dtype=np.float32)

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        return np.vstack([self._scores_one(request.query) for request in requests]) if requests else \
            np.zeros((0, self.n_items), dtype=np.float32)

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        rows = [self._scores_one(request.query)[candidates[row]] for row, request in enumerate(requests)]
        return np.vstack(rows) if rows else np.zeros(candidates.shape, dtype=np.float32)
