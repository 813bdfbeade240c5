"""History and item-activity features of the recommend stack, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipelines.core.items import Request
from pipelines.ranking.history_match import HistoryMatcher
from pipelines.ranking.tasks import load_matcher
from pipelines.ranking.text_match import TitleMatcher

# 4 items; item 3 never interacted. Newest interaction: day 10.
INTERACTIONS = pd.DataFrame({
    "user": ["a", "a", "b", "b", "b"],
    "item": [0, 1, 0, 2, 0],
    "timestamp": pd.to_datetime(["2026-01-01", "2026-01-05", "2026-01-02", "2026-01-03", "2026-01-11"], utc=True),
})


class FakeItemCF:
    similarity = sp.csr_matrix(np.array([[0, .5, .2, 0], [.5, 0, 0, .1], [.2, 0, 0, 0], [0, .1, 0, 0]], dtype=np.float32))


class FakeDense:
    item_embeddings = np.eye(4, dtype=np.float32)  # orthogonal texts: each item similar only to itself


class FakeRelations:
    kinds = ["also_bought"]

    def kind_scores(self, requests, candidates):
        # one per candidate that equals history item + 1 (a fake relation), counted over the history
        return {"also_bought": np.array([[sum(item == h + 1 for h in request.history) for item in row]
                                         for request, row in zip(requests, candidates)], dtype=np.float32)}


@pytest.fixture(scope="module")
def matcher():
    return HistoryMatcher(INTERACTIONS, 4)


def named(matcher, components, request, items):
    values = matcher.features([request], np.array([items]), components)[0]
    names = matcher.feature_names(components)
    assert values.shape == (len(items), len(names))
    return [dict(zip(names, (round(float(v), 4) for v in row))) for row in values]


def test_item_activity_from_the_training_interactions(matcher):
    rows = named(matcher, {}, Request(history=(0,)), [0, 1, 3])
    assert rows[0]["activity_log_count"] == round(math.log1p(3), 4)
    assert rows[0]["activity_days_first"] == 10.0 and rows[0]["activity_days_last"] == 0.0
    assert rows[1]["activity_days_first"] == rows[1]["activity_days_last"] == 6.0
    # never met: no count, one day older than the oldest interaction
    assert rows[2]["activity_log_count"] == 0.0 and rows[2]["activity_days_first"] == rows[2]["activity_days_last"] == 11.0
    assert rows[0]["history_length"] == round(math.log1p(1), 4)


def test_the_last_item_alone_and_the_latest_texts(matcher):
    components = {"itemcf": FakeItemCF(), "dense": FakeDense(), "relations": FakeRelations()}
    rows = named(matcher, components, Request(history=(2, 0)), [1, 2, 3])
    assert [row["itemcf_last"] for row in rows] == [0.5, 0.2, 0.0]  # similarity to item 0, the last one
    assert [row["dense_last"] for row in rows] == [0.0, 0.0, 0.0]
    assert [row["dense_max"] for row in rows] == [0.0, 1.0, 0.0]  # item 2 is in the history
    assert [row["dense_mean"] for row in rows] == [0.0, 0.5, 0.0]
    # also_bought: item 1 follows item 0 (the last), item 3 follows item 2 (the one before)
    assert [row["relations_also_bought"] for row in rows] == [1.0, 0.0, 1.0]
    assert [row["relations_also_bought_last"] for row in rows] == [1.0, 0.0, 0.0]
    assert rows[0]["history_length"] == round(math.log1p(2), 4)


def test_padding_and_empty_histories(matcher):
    components = {"itemcf": FakeItemCF(), "dense": FakeDense()}
    features = matcher.features([Request(), Request(history=(1,))], np.array([[0, -1], [-1, 2]]), components)
    assert features.shape == (2, 2, len(matcher.feature_names(components)))
    assert not features[0, 1].any() and not features[1, 0].any()
    names = matcher.feature_names(components)
    assert features[0, 0, names.index("itemcf_last")] == 0.0 and features[0, 0, names.index("history_length")] == 0.0


def test_saved_beside_the_stack_and_loaded_by_the_task(matcher, tmp_path):
    matcher.save(tmp_path / "recommend")
    TitleMatcher(["cordless drill"]).save(tmp_path / "search")
    assert isinstance(load_matcher(tmp_path, "recommend"), HistoryMatcher)
    assert isinstance(load_matcher(tmp_path, "search"), TitleMatcher)
    assert load_matcher(tmp_path, "nothing") is None
    again = load_matcher(tmp_path, "recommend")
    candidates = np.array([[0, 1, 2, 3]])
    assert np.array_equal(again.features([Request(history=(0,))], candidates, {}),
                          matcher.features([Request(history=(0,))], candidates, {}))
