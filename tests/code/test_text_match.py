"""Title-match features of the search stack, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.ranking.text_match import FEATURES, TitleMatcher

TITLES = ["DEWALT 20-Volt Max Cordless Drill", "Everbilt 1/2 in. Galvanized Washer", "Refrigerator Water Filter",
          "Cordless Saw"]


@pytest.fixture(scope="module")
def matcher():
    return TitleMatcher(TITLES)


def named(values) -> dict[str, float]:
    return dict(zip(FEATURES, (round(float(v), 4) for v in values)))


def test_a_query_fully_in_a_title(matcher):
    got = named(matcher.query_features("cordless drill 20 volt", np.array([0]))[0])
    # title words (stemmed, stopwords out): dewalt 20 volt max cordless drill -> 6
    assert got["title_overlap"] == 1.0 and got["title_weighted"] == 1.0
    assert got["title_coverage"] == round(4 / 6, 4)
    assert got["title_lastword"] == got["title_firstword"] == got["title_numbers"] == 1.0
    # query pairs: (cordless, drill) yes, (drill, 20) no, (20, volt) yes
    assert got["title_bigrams"] == round(2 / 3, 4)
    assert got["title_phrase"] == 0.0 and got["title_prefix"] == 1.0
    assert got["title_length"] == 6.0 and got["title_querylen"] == 4.0


def test_rare_words_weigh_more(matcher):
    # "cordless" is in 2 of 4 titles (idf ln 3), "drill" in 1 (idf ln 5); the saw holds only "cordless"
    got = named(matcher.query_features("cordless drill", np.array([3]))[0])
    assert got["title_overlap"] == 0.5
    assert got["title_weighted"] == round(math.log(3) / (math.log(3) + math.log(5)), 4)
    assert got["title_lastword"] == 0.0 and got["title_firstword"] == 1.0


def test_misspelled_words_keep_their_prefix(matcher):
    got = named(matcher.query_features("refridgerator filter", np.array([2]))[0])
    assert got["title_overlap"] == 0.5 and got["title_prefix"] == 1.0 and got["title_numbers"] == -1.0


def test_character_trigrams_match_typos_and_joined_words(matcher):
    chars = FEATURES.index("title_chars")
    typo = matcher.query_features("refridgerator watr filter", np.arange(len(TITLES)))[:, chars]
    assert typo.argmax() == 2 and 0.5 < typo[2] < 1.0 and typo[0] < 0.1
    joined = matcher.query_features("cordlessdrill", np.array([0, 1]))[:, chars]
    assert joined[0] > 0.2 and joined[1] == 0.0  # no word of it in the title: overlap says 0, trigrams do not
    assert matcher.query_features("cordless saw", np.array([3]))[0, chars] == pytest.approx(1.0, abs=1e-5)


def test_the_query_as_a_phrase(matcher):
    assert named(matcher.query_features("Water  filter", np.array([2]))[0])["title_phrase"] == 1.0


def test_padding_and_empty_queries(matcher):
    features = matcher.features(["", None], np.array([[0, -1], [-1, 1]]))
    assert features.shape == (2, 2, len(FEATURES))
    assert not features[0, 1].any() and not features[1, 0].any()
    assert features[0, 0, FEATURES.index("title_overlap")] == 0.0


def test_saved_and_loaded_alike(matcher, tmp_path):
    matcher.save(tmp_path)
    again = TitleMatcher.load(tmp_path)
    candidates = np.array([[0, 1, 2, 3]])
    assert np.array_equal(again.features(["cordless drill"], candidates), matcher.features(["cordless drill"], candidates))
    assert TitleMatcher.load(tmp_path / "nothing") is None


def test_word_features_read_the_corrected_query():
    """With text.spelling the word features see "cordless drill" in "cordles dril"; without, they see nothing
    (the character trigrams match the typo either way); title_corrected counts the corrected words."""
    from tests.conftest import params_section

    spelled = TitleMatcher(TITLES, params_section("text.spelling"))
    typed = named(spelled.query_features("cordles drill", np.array([0]))[0])
    plain = named(TitleMatcher(TITLES).query_features("cordles drill", np.array([0]))[0])
    assert typed["title_overlap"] == 1.0 and typed["title_corrected"] == 1.0
    assert plain["title_overlap"] == 0.5 and plain["title_corrected"] == 0.0
    assert typed["title_chars"] == plain["title_chars"] > 0
    assert named(spelled.query_features("cordless drill", np.array([0]))[0])["title_corrected"] == 0.0
