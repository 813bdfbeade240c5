"""Query spelling correction learned from the catalog's own words (issue #20).

Shoppers misspell ("toliet", "sprkinler"), join ("outdoorfurniture", "deckpaint") and split words; a query word
the catalog never uses matches nothing in BM25 and no title feature. The corrector knows the words of the
indexed texts and how many texts hold each. A query word it does not know (neither the word nor its stem
occurs in the catalog) becomes:
1. the most frequent known word one edit away (SymSpell's symmetric delete lookup, symspellpy);
2. else the known words it is made of, when it splits into 2 or 3 of 3 letters or more ("outdoorfurniture" ->
   "outdoor furniture");
3. else, for a word of more than 5 letters, the most frequent known word within `max_edit_distance` edits
   (shorter words have too many neighbours that far);
4. else itself.
Numbers, known words and words shorter than `min_word_length` are kept as they are. The corrector reads only
the catalog's texts, never a query or a judgment, so it says nothing of which split a query belongs to.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from pipelines.core.params import SpellingParams

_WORD = re.compile(r"[a-z]+")
_TOKEN = re.compile(r"[a-z0-9]+")  # a token with a digit (a model number: "rs675pxgb8") is never corrected
_SHORT_WORD = 5  # words of up to this many letters get one edit at most
_MIN_PART, _MAX_PARTS = 3, 3  # a joined word splits into 2 or 3 known words of 3 letters or more
_PREFIX_LENGTH = 7  # SymSpell's prefix: its index holds the deletes of each word's first 7 letters


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Snowball (nltk) English stem: BM25's tokens and the corrector's known stems."""
    return _stemmer().stem(word)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


class QueryCorrector:
    """The catalog's vocabulary (word -> how many texts hold it) and a SymSpell index of it, built on first
    use and never pickled (a saved corrector stays a word count)."""

    def __init__(self, texts: Iterable[str], params: SpellingParams):
        self.params = params
        counts = Counter(word for text in texts for word in set(_WORD.findall(str(text).lower())))
        self.counts = dict(counts)
        self.stems = frozenset(stem(word) for word in counts)
        self._speller = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_speller"] = None
        return state

    def _index(self):
        if self._speller is None:
            from symspellpy import SymSpell

            speller = SymSpell(max_dictionary_edit_distance=self.params.max_edit_distance, prefix_length=_PREFIX_LENGTH)
            for word, count in self.counts.items():
                if len(word) >= 2:
                    speller.create_dictionary_entry(word, count)
            self._speller = speller
        return self._speller

    def known(self, word: str) -> bool:
        return word in self.counts or stem(word) in self.stems

    def correct_word(self, word: str) -> str:
        """The word, or what the catalog would call it (one or more known words)."""
        if len(word) < self.params.min_word_length or self.known(word):
            return word
        from symspellpy import Verbosity

        speller = self._index()
        found = speller.lookup(word, Verbosity.TOP, max_edit_distance=1, transfer_casing=False)
        if found:
            return found[0].term
        parts = speller.word_segmentation(word, max_edit_distance=0).corrected_string.split()
        if 1 < len(parts) <= _MAX_PARTS and all(len(part) >= _MIN_PART and part in self.counts for part in parts):
            return " ".join(parts)
        if len(word) > _SHORT_WORD and self.params.max_edit_distance > 1:
            found = speller.lookup(word, Verbosity.TOP, max_edit_distance=self.params.max_edit_distance,
                                   transfer_casing=False)
        return found[0].term if found else word

    def corrected(self, query: str | None) -> tuple[str, int]:
        """The lowercased query with each unknown word corrected (everything else as it was), and how many of
        its words the correction changed: one pass for both."""
        text = (query or "").lower()
        if not self.params.enabled:
            return text, 0
        changed = 0

        def replace(match: re.Match) -> str:
            nonlocal changed
            token = match.group(0)
            fixed = self.correct_word(token) if token.isalpha() else token
            changed += fixed != token
            return fixed

        return _TOKEN.sub(replace, text), changed

    def correct(self, query: str | None) -> str:
        return self.corrected(query)[0]

    def corrected_words(self, query: str | None) -> int:
        return self.corrected(query)[1]
