"""How well a candidate's title matches the query: features the search stack learns from.

The recall components score text as a whole (BM25 sums term weights, the dense model compares
meanings); these say which parts of the query the title holds: the share of query words, the last
word (in product searches usually the product type: "cordless drill"), the same share weighted by
how rare each word is in the catalog (IDF), the share of the title the query covers, the numbers,
word pairs in order, the query as a phrase, words that share a 4-letter prefix (misspellings
such as "refridgerator" keep it), and the cosine of the two texts' character trigrams weighted by
TF-IDF (typos, joined or split words: "dishwasher" and "dish washer" share most of theirs). The word features
read the query with its words unknown to the titles corrected (text.spelling; `title_corrected` counts the
words changed). They read only the query and the catalog's titles, never any judgment, so they carry no
information about which split an item or query belongs to.

The fuse stage fits a `TitleMatcher` on the catalog (each title's words, stemmed, computed once) and
saves it beside the search fusion; evaluate and the service load it, so offline and online compute
the same numbers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from pipelines.core.params import SpellingParams
from pipelines.models.rankers.bm25 import english_stopwords
from pipelines.models.spelling import QueryCorrector, stem
from pipelines.ranking.saved import SavedBesideStack

FEATURES = ("title_overlap", "title_weighted", "title_coverage", "title_lastword", "title_firstword", "title_numbers",
            "title_bigrams", "title_phrase", "title_prefix", "title_length", "title_querylen", "title_chars",
            "title_corrected")
MATCHER_FILE = "title_match.joblib"
PREFIX = 4
CHAR_NGRAMS = (3, 3)  # trigrams within word boundaries: short enough to survive a typo, long enough to be specific
_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")


def raw_words(text: str) -> list[str]:
    stop = english_stopwords()
    return [word for word in _WORD.findall(text.lower()) if word not in stop]


def stems(words: Sequence[str]) -> list[str]:
    return [stem(word) if word[0].isalpha() else word for word in words]


def _title_tables(titles: Sequence[str]) -> tuple[list, list, list, np.ndarray]:
    """Per title: its stemmed words, their pairs in order, the raw words' prefixes, and its word count."""
    words = [raw_words(title) for title in titles]
    stemmed = [stems(item) for item in words]
    return ([frozenset(item) for item in stemmed], [frozenset(zip(item[:-1], item[1:])) for item in stemmed],
            [frozenset(word[:PREFIX] for word in item if len(word) >= PREFIX) for item in words],
            np.array([len(item) for item in words], dtype=np.float32))


class TitleMatcher(SavedBesideStack):
    """Per catalog item: its title's stemmed words, their pairs in order, their prefixes, its lowercased text
    and its character-trigram TF-IDF vector (unit length)."""

    FILE = MATCHER_FILE

    def __init__(self, titles: Sequence[str], spelling: SpellingParams | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        # the query's words unknown to the titles are corrected before the word features (models/spelling.py)
        self.corrector = QueryCorrector(titles, spelling) if spelling is not None and spelling.enabled else None

        self.lower = [title.lower() for title in titles]
        self.char_vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, sublinear_tf=True,
                                               dtype=np.float32)
        self.char_vectors = self.char_vectorizer.fit_transform(self.lower).tocsr()
        self.words, self.pairs, self.prefixes, self.lengths = _title_tables(titles)
        counts: dict[str, int] = {}
        for item in self.words:
            for word in item:
                counts[word] = counts.get(word, 0) + 1
        self.idf = {word: float(np.log(1 + len(titles) / count)) for word, count in counts.items()}
        self.unknown_idf = float(np.log(1 + len(titles)))  # a word no title holds is as rare as can be

    def __len__(self) -> int:
        return len(self.lower)

    def extended(self, titles: Sequence[str]) -> "TitleMatcher":
        """A copy that also knows `titles` (products added after training) at the next positions. The
        vocabulary, the character TF-IDF weights and the word IDFs stay the fitted ones: the stack learned
        from those numbers."""
        lower = [title.lower() for title in titles]
        words, pairs, prefixes, lengths = _title_tables(titles)
        extended = copy.copy(self)
        extended.lower = self.lower + lower
        extended.char_vectors = sp.vstack([self.char_vectors, self.char_vectorizer.transform(lower)]).tocsr()
        extended.words, extended.pairs = self.words + words, self.pairs + pairs
        extended.prefixes, extended.lengths = self.prefixes + prefixes, np.concatenate([self.lengths, lengths])
        return extended

    def query_features(self, query: str, items: np.ndarray) -> np.ndarray:
        """[len(items), len(FEATURES)] for one query; item -1 (padding) gets zeros. The word features read the
        query as corrected, the character trigrams as typed (they match a typo on their own)."""
        corrector = getattr(self, "corrector", None)  # None in a matcher saved before spelling correction
        corrected, n_corrected = corrector.corrected(query) if corrector is not None else (query or "", 0)
        words = raw_words(corrected)
        query_stems = stems(words)
        numbers = [word for word in query_stems if word[0].isdigit()]
        pairs = list(zip(query_stems[:-1], query_stems[1:]))
        prefixes = [word[:PREFIX] for word in words if len(word) >= PREFIX and word[0].isalpha()]
        phrase = " ".join(corrected.lower().split())
        weights = [self.idf.get(word, self.unknown_idf) for word in query_stems]
        query_set = set(query_stems)
        chars = self.char_similarity(query, items)
        out = np.zeros((len(items), len(FEATURES)), dtype=np.float32)
        for row, item in enumerate(np.asarray(items).tolist()):
            if item < 0:
                continue
            title = self.words[item]
            out[row] = (
                sum(word in title for word in query_stems) / len(query_stems) if query_stems else 0.0,
                sum(w for word, w in zip(query_stems, weights) if word in title) / sum(weights) if weights else 0.0,
                len(title & query_set) / len(title) if title else 0.0,
                float(bool(query_stems) and query_stems[-1] in title),
                float(bool(query_stems) and query_stems[0] in title),
                sum(number in title for number in numbers) / len(numbers) if numbers else -1.0,
                sum(pair in self.pairs[item] for pair in pairs) / len(pairs) if pairs else -1.0,
                float(bool(phrase) and phrase in self.lower[item]),
                sum(prefix in self.prefixes[item] for prefix in prefixes) / len(prefixes) if prefixes else -1.0,
                self.lengths[item],
                float(len(query_stems)),
                chars[row],
                float(n_corrected),
            )
        return out

    def char_similarity(self, query: str | None, items: np.ndarray) -> np.ndarray:
        """Cosine of the query's and each item's character-trigram TF-IDF vectors (padding gets 0)."""
        items = np.asarray(items, dtype=np.int64)
        query_vector = self.char_vectorizer.transform([(query or "").lower()])
        similarity = np.asarray((self.char_vectors[np.maximum(items, 0)] @ query_vector.T).todense()).ravel()
        return np.where(items >= 0, similarity, 0.0).astype(np.float32)

    def features(self, queries: Sequence[str | None], candidates: np.ndarray) -> np.ndarray:
        """[n_requests, n_candidates, len(FEATURES)] for candidate matrices (item positions, -1 = padding)."""
        if not len(queries):
            return np.zeros((0, candidates.shape[1] if candidates.ndim == 2 else 0, len(FEATURES)), dtype=np.float32)
        return np.stack([self.query_features(query, row) for query, row in zip(queries, candidates)])

    def stack_features(self, requests: Sequence, candidates: np.ndarray, components: Mapping | None = None) -> np.ndarray:
        """The stack's columns for these requests (ranking.tasks.stack_inputs); reads only their queries."""
        return self.features([request.query for request in requests], np.asarray(candidates))

    @staticmethod
    def stack_names(components: Mapping | None = None) -> list[str]:
        return list(FEATURES)
