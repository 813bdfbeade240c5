"""BM25 over the items' text (bm25s), with optional stemming and stopword removal, and the query's words the
catalog never uses corrected to its own (text.spelling, pipelines/models/spelling.py); sizes and units written one
way in texts and queries alike (text.bm25.measures, pipelines/models/measures.py).

Requests without a query score 0 for every item. Scores are exact (no top-N truncation): bm25s
keeps a sparse term x document matrix, so one query costs a few sparse column sums.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.params import BM25Params, SpellingParams
from pipelines.models.rankers.base import Ranker, memo_last
from pipelines.models.measures import normalize_measures
from pipelines.models.spelling import QueryCorrector, stem

TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")


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

    def __init__(self, params: BM25Params, spelling: SpellingParams | None = None):
        self.params = params
        self.spelling = spelling
        self.corrector: QueryCorrector | None = None  # fitted on the indexed texts when spelling is enabled
        self.model = None
        self.n_items = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> "BM25":
        return cls(settings.text.bm25, settings.text.spelling)

    def _tokens(self, text: str) -> list[str]:
        if getattr(self.params, "measures", False):  # absent in a BM25 pickled before measures were normalized
            text = normalize_measures(text)
        return tokenize(text, self.params.stemming, self.params.stopwords)

    def _query_tokens(self, query: str | None) -> list[str]:
        """A query's tokens, its words unknown to the catalog corrected first (models/spelling.py)."""
        corrector = getattr(self, "corrector", None)  # None in a BM25 pickled before spelling correction
        return self._tokens(corrector.correct(query) if corrector is not None else (query or ""))

    def fit(self, data: TrainingData) -> "BM25":
        import bm25s

        documents = getattr(data.items, self.params.field)
        corpus = [self._tokens(text) or ["<empty>"] for text in documents]
        self.model = bm25s.BM25(k1=self.params.k1, b=self.params.b, method=self.params.method)
        self.model.index(corpus, show_progress=False)
        self.n_items = len(documents)
        self.corrector = QueryCorrector(documents, self.spelling) if self.spelling and self.spelling.enabled else None
        return self

    def _scores_one(self, query: str | None) -> np.ndarray:
        """Every item's score; the last query's scores are kept per thread (memo_last), since one request asks
        twice (retrieve, then score its candidates). Read-only: callers index or copy it."""
        def compute() -> np.ndarray:
            scores = self._compute_scores(query)
            scores.setflags(write=False)
            return scores

        return memo_last(self, (self.model,), query, self.n_items, compute)

    def _compute_scores(self, query: str | None) -> np.ndarray:
        if not query:
            return np.zeros(self.n_items, dtype=np.float32)
        vocabulary = self.model.vocab_dict
        tokens = [token for token in self._query_tokens(query) if token in vocabulary]
        if not tokens:
            return np.zeros(self.n_items, dtype=np.float32)
        return np.asarray(self.model.get_scores(tokens), dtype=np.float32)

    def document_frequencies(self, tokens: Sequence[str]) -> np.ndarray:
        """How many indexed documents hold each token (0 for a token the index never saw)."""
        vocabulary, pointers = self.model.vocab_dict, self.model.scores["indptr"]
        ids = [vocabulary.get(token) for token in tokens]
        return np.array([0 if i is None else int(pointers[i + 1] - pointers[i]) for i in ids], dtype=np.float64)

    def average_length(self, texts: Sequence[str], sample: int = 2000) -> float:
        """The indexed documents' mean token count (bm25s keeps no lengths), from an even sample of their texts."""
        step = max(1, len(texts) // sample)
        lengths = [len(self._tokens(text) or ["<empty>"]) for text in texts[::step]]
        return float(np.mean(lengths)) if lengths else 1.0

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        return [self._tokens(text) for text in texts]

    def score_texts(self, query: str | None, documents: Sequence[Sequence[str]], average_length: float) -> np.ndarray:
        """Scores of documents outside the index (token lists from `tokens`) for a query, with the index's
        statistics: document frequencies, size, and the given average length. A product added after training
        thus scores as it would have in the index (bm25s's own idf and tf formulas of params.method)."""
        from collections import Counter

        from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer

        scores = np.zeros(len(documents), dtype=np.float32)
        terms = list(dict.fromkeys(self._query_tokens(query)))
        if not terms or not len(documents):
            return scores
        idf_of, tfc_of = _select_idf_scorer(self.params.method), _select_tfc_scorer(self.params.method)
        total = self.model.scores["num_docs"]
        idf = [idf_of(df, total) for df in self.document_frequencies(terms)]
        for row, document in enumerate(documents):
            counts, length = Counter(document), max(len(document), 1)
            for term, weight in zip(terms, idf):
                if counts[term]:
                    tfc = tfc_of(np.array([counts[term]], dtype=np.float32), length, average_length,
                                 self.params.k1, self.params.b, 0.5)
                    scores[row] += weight * float(tfc[0])
        return scores

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        return np.vstack([self._scores_one(request.query) for request in requests]) if requests else \
            np.zeros((0, self.n_items), dtype=np.float32)

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        rows = [self._scores_one(request.query)[candidates[row]] for row, request in enumerate(requests)]
        return np.vstack(rows) if rows else np.zeros(candidates.shape, dtype=np.float32)
