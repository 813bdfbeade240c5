"""Slices of a task's held-out requests (issue #20), so that a gain on one kind of request cannot hide a loss on
another: evaluate reports every method on each slice as well as on all requests.

- search: head and tail queries (a query text searched at least `head_query_min_searches` times in the log, as
  distinct query ids over every split, is head: a shop's frequent searches), short and long queries (at least
  `long_query_min_tokens` words: the specific, long-tail wording), and queries with and without a word the
  spelling corrector changes (text.spelling: BM25's corrector, fitted on the catalog).
- recommend: cold and warm users (at most `cold_user_max_history` events before the split), cold and warm items
  (a target with at most `cold_item_max_events` events in the train split, which the components learned from).

A user or query slice keeps its requests whole. An item slice keeps, of each request, only its targets in the
slice, and leaves out a request with none: the figure says how well the cold (or warm) items themselves are found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.core.items import Request
from pipelines.core.params import SliceParams


@dataclass
class Slice:
    rows: list[int]  # the requests in the slice (their index among the task's requests)
    gains: list[dict[int, float]]  # their gains within the slice, one a row


def query_key(text: str) -> str:
    """A query as the log counts it: case and spacing do not make another query."""
    return " ".join(str(text).casefold().split())


def searches_by_query(judgments: pd.DataFrame) -> Counter:
    """Normalized query text -> how many searches (distinct query ids) asked it."""
    unique = judgments.drop_duplicates("query_id")
    return Counter(query_key(text) for text in unique["query"])


def train_events_by_item(interactions: pd.DataFrame) -> Counter:
    """Item position -> its events in the train split."""
    return Counter(interactions.loc[interactions["split"] == "train", "item"].astype(int).tolist())


def _whole(requests_in: Sequence[bool], gains: Sequence[dict[int, float]]) -> Slice:
    rows = [row for row, inside in enumerate(requests_in) if inside]
    return Slice(rows, [gains[row] for row in rows])


def _targets(gains: Sequence[dict[int, float]], keep) -> Slice:
    rows, kept = [], []
    for row, gain in enumerate(gains):
        chosen = {item: value for item, value in gain.items() if keep(item)}
        if any(value > 0 for value in chosen.values()):
            rows.append(row)
            kept.append(chosen)
    return Slice(rows, kept)


def search_slices(requests: Sequence[Request], gains: Sequence[dict[int, float]], searches: Counter,
                  params: SliceParams, corrector=None) -> dict[str, Slice]:
    head = [searches.get(query_key(request.query), 0) >= params.head_query_min_searches for request in requests]
    long = [len(str(request.query).split()) >= params.long_query_min_tokens for request in requests]
    slices = {"head_query": _whole(head, gains), "tail_query": _whole([not value for value in head], gains),
              "short_query": _whole([not value for value in long], gains), "long_query": _whole(long, gains)}
    if corrector is not None:
        corrected = [corrector.corrected_words(request.query) > 0 for request in requests]
        slices |= {"corrected_query": _whole(corrected, gains),
                   "uncorrected_query": _whole([not value for value in corrected], gains)}
    return slices


def recommend_slices(requests: Sequence[Request], gains: Sequence[dict[int, float]], train_events: Counter,
                     params: SliceParams) -> dict[str, Slice]:
    cold_user = [len(request.history) <= params.cold_user_max_history for request in requests]

    def cold_item(item: int) -> bool:
        return train_events.get(item, 0) <= params.cold_item_max_events

    return {"cold_user": _whole(cold_user, gains), "warm_user": _whole([not value for value in cold_user], gains),
            "cold_item": _targets(gains, cold_item), "warm_item": _targets(gains, lambda item: not cold_item(item))}


def task_slices(task: str, requests: Sequence[Request], gains: Sequence[dict[int, float]], features_dir: Path,
                params: SliceParams, corrector=None) -> dict[str, Slice]:
    """The slices of a task's requests, from the features stage's tables; with the search corrector (BM25's,
    models/spelling.py) also the queries it corrects and those it leaves as typed."""
    if task == "search":
        judgments = pd.read_parquet(Path(features_dir) / "judgments.parquet", columns=["query_id", "query"])
        return search_slices(requests, gains, searches_by_query(judgments), params, corrector)
    interactions = pd.read_parquet(Path(features_dir) / "interactions.parquet", columns=["item", "split"])
    return recommend_slices(requests, gains, train_events_by_item(interactions), params)
