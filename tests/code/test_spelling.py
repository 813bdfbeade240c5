"""Query spelling correction from the catalog's words (pipelines/models/spelling.py) and measure normalization
(pipelines/models/measures.py), on hand-made catalogs."""

from __future__ import annotations

import pickle

import pytest

from pipelines.models.measures import normalize_measures
from pipelines.models.spelling import QueryCorrector
from tests.conftest import params_section

CATALOG = ["Toilet seat elongated white", "Toilet tank lever", "Outdoor furniture cushion", "Patio furniture set",
           "Lawn sprinkler head", "Oscillating sprinkler", "Cordless drill kit", "Deck paint gray", "Wire mesh roll",
           "Water heater 40 gallon", "Stainless steel sink"]


@pytest.fixture(scope="module")
def corrector():
    return QueryCorrector(CATALOG, params_section("text.spelling"))


@pytest.mark.parametrize("typed, meant", [
    ("toliet seat", "toilet seat"),  # a transposition: one edit
    ("lawn sprkinler", "lawn sprinkler"),  # a dropped letter in a long word: two edits
    ("outdoorfurniture", "outdoor furniture"),  # joined words split into known ones
    ("deckpaint", "deck paint"),
    ("stainles stell sink", "stainless steel sink"),
])
def test_unknown_words_become_the_catalogs(corrector, typed, meant):
    assert corrector.correct(typed) == meant
    assert corrector.corrected_words(typed) == sum(word != corrector.correct(word) for word in typed.split()) >= 1


def test_known_words_numbers_and_model_numbers_are_kept(corrector):
    assert corrector.correct("Cordless DRILLS 40 gallon") == "cordless drills 40 gallon"  # "drills": its stem is known
    assert corrector.correct("heater rs675pxgb8") == "heater rs675pxgb8"  # a token with a digit is never touched
    assert corrector.correct("abc") == "abc"  # shorter than min_word_length
    assert corrector.corrected_words("cordless drill") == 0
    assert corrector.correct(None) == ""


def test_a_word_far_from_every_known_one_is_kept(corrector):
    assert corrector.correct("zyxwvut") == "zyxwvut"


def test_disabled_only_lowercases():
    off = QueryCorrector(CATALOG, params_section("text.spelling", enabled=False))
    assert off.correct("Toliet") == "toliet" and off.corrected_words("toliet") == 0


def test_a_pickled_corrector_is_a_word_count_and_corrects_alike(corrector):
    corrector.correct("toliet")  # builds the SymSpell index
    restored = pickle.loads(pickle.dumps(corrector))
    assert restored._speller is None and restored.counts == corrector.counts
    assert restored.correct("toliet sprkinler") == corrector.correct("toliet sprkinler") == "toilet sprinkler"


@pytest.mark.parametrize("text, expected", [
    ("1/2 in. copper pipe", "0d5inch copper pipe"),
    ('3/4" plywood', "0d75inch plywood"),
    ("1-1/2 in. PVC", "1d5inch pvc"),
    ("1 1/2 inch pvc", "1d5inch pvc"),
    ("8ft ladder", "8foot ladder"),
    ("8 feet ladder", "8foot ladder"),
    ("5 gal. bucket", "5gallon bucket"),
    ("18v drill", "18volt drill"),
    ("12-Gauge wire", "12gauge wire"),
    ("10 sq. ft. tile", "10sqft tile"),
    ("model rs675pxgb8", "model rs675pxgb8"),
    ("2 in. x 4 in. x 8 ft. stud", "2inch x 4inch x 8foot stud 2x4 4x8"),
    ("2x4x8", "2x4x8 2x4 4x8"),
])
def test_measures_are_written_one_way(text, expected):
    assert " ".join(normalize_measures(text).split()) == expected


def test_a_query_and_a_title_writing_one_measure_differently_share_its_token():
    title, query = normalize_measures("Copper Pipe 1/2 in. x 10 ft."), normalize_measures('1/2" copper pipe 10 feet')
    assert {"0d5inch", "10foot"} <= set(title.split()) & set(query.split())


def test_the_services_warm_up_query_builds_the_correctors_index(corrector):
    from pipelines.serving.app import WARM_UP_QUERY

    fresh = QueryCorrector(CATALOG, params_section("text.spelling"))
    fresh.correct(WARM_UP_QUERY)
    assert fresh._speller is not None
