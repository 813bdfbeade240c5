"""Slices of the held-out requests (pipelines/ranking/slices.py), by hand, and in evaluate's metrics."""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines.core.items import Request
from pipelines.core.params import SliceParams
from pipelines.ranking.slices import query_key, recommend_slices, search_slices, searches_by_query

PARAMS = SliceParams(cold_user_max_history=2, cold_item_max_events=3, head_query_min_searches=2,
                     long_query_min_tokens=3)


def test_query_slices_count_searches_of_the_same_text_and_words():
    import pandas as pd

    log = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q3", "q4"],  # q1 judged twice: one search
                        "query": ["Cordless Drill", "Cordless Drill", "cordless  drill", "hammer", "red  oak stair tread"]})
    searches = searches_by_query(log)
    assert searches == Counter({"cordless drill": 2, "hammer": 1, "red oak stair tread": 1})
    requests = [Request(query="CORDLESS drill"), Request(query="hammer"), Request(query="red oak stair tread")]
    gains = [{1: 2.0}, {2: 1.0}, {3: 3.0}]
    slices = search_slices(requests, gains, searches, PARAMS)
    assert slices["head_query"].rows == [0] and slices["tail_query"].rows == [1, 2]
    assert slices["short_query"].rows == [0, 1] and slices["long_query"].rows == [2]
    assert slices["long_query"].gains == [{3: 3.0}]  # a query slice keeps its requests' gains whole
    assert query_key("  Red OAK\tstair ") == "red oak stair"


def test_user_slices_split_by_history_and_item_slices_keep_their_targets():
    requests = [Request(history=(1, 2)), Request(history=(1, 2, 3, 4)), Request(history=())]
    gains = [{10: 1.0, 11: 1.0}, {11: 1.0}, {12: 1.0}]
    train_events = Counter({10: 3, 11: 50})  # 12 never seen in train: cold
    slices = recommend_slices(requests, gains, train_events, PARAMS)
    assert slices["cold_user"].rows == [0, 2] and slices["warm_user"].rows == [1]
    assert slices["cold_item"].rows == [0, 2] and slices["cold_item"].gains == [{10: 1.0}, {12: 1.0}]
    assert slices["warm_item"].rows == [0, 1] and slices["warm_item"].gains == [{11: 1.0}, {11: 1.0}]
