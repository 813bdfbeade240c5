"""How a candidate relates to the user's history and to the shop's activity: features the recommend stack learns from.

The recall components each turn a history into one score per item; the stack learns better from some
of what they summed away: how the candidate relates to the *last* item alone (a shopper's next item
follows the last one more than the older ones), the largest and the mean text similarity to the latest
items next to the component's recency-weighted one, each kind of item relation on its own (also bought,
also viewed, same category, same brand), and how long the candidate has been sold and when it was last
bought (a product that sold yesterday is more likely next than one last sold years ago). The history
length lets the stack trust behaviour components more for long histories and the catalog's activity
for short ones.

They read the training interactions (counts and times per item, never a judgment or a held-out
interaction) and the fitted components, so they carry no information about which split an item or a
user belongs to. The fuse stage fits a `HistoryMatcher` on the train split and saves it beside the
recommend fusion; evaluate and the service load it, so offline and online compute the same numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.items import Request
from pipelines.models.rankers.popularity import age_days
from pipelines.ranking.saved import SavedBesideStack

MATCHER_FILE = "history_match.joblib"
ITEM_FEATURES = ("activity_log_count", "activity_days_first", "activity_days_last")
REQUEST_FEATURES = ("history_length",)
TEXT_FEATURES = ("dense_last", "dense_max", "dense_mean")  # named after the component whose embeddings they read
TEXT_HISTORY_ITEMS = 10  # latest history items the text features compare with (the dense component's default)


class HistoryMatcher(SavedBesideStack):
    """Per catalog item: its log interaction count, and the days from its first and its last interaction to
    the newest training interaction (an item never met counts as one day older than the oldest)."""

    FILE = MATCHER_FILE

    def __init__(self, interactions: pd.DataFrame, n_items: int):
        items = interactions["item"].to_numpy(dtype=np.int64)
        self.n_items = n_items
        count = np.bincount(items, minlength=n_items).astype(np.float32)
        age = age_days(interactions["timestamp"]) if "timestamp" in interactions and len(interactions) \
            else np.zeros(len(items))
        never = float(age.max()) + 1.0 if len(age) else 1.0
        last = np.full(n_items, never)
        np.minimum.at(last, items, age)
        first = np.full(n_items, -1.0)
        np.maximum.at(first, items, age)
        first[first < 0] = never
        self.item_table = np.stack([np.log1p(count), first, last], axis=1).astype(np.float32)

    def extended(self, titles: Sequence[str]) -> "HistoryMatcher":
        """A copy that also knows len(titles) products added after training, each as an item never met in the
        training interactions (no count, first and last seen one day before the oldest interaction)."""
        counts, first = self.item_table[:, 0], self.item_table[:, 1]
        never = float(first.max()) + (0.0 if (counts == 0).any() else 1.0) if len(first) else 1.0
        extended = copy.copy(self)
        added = np.tile(np.array([0.0, never, never], dtype=np.float32), (len(titles), 1))
        extended.item_table = np.concatenate([self.item_table, added])
        extended.n_items = self.n_items + len(titles)
        return extended

    @staticmethod
    def feature_names(components: Mapping[str, object]) -> list[str]:
        """The features computed with these components (each adds what it can say about the last item)."""
        names = list(ITEM_FEATURES) + list(REQUEST_FEATURES)
        if "itemcf" in components:
            names.append("itemcf_last")
        if "relations" in components:
            names += [f"relations_{kind}" for kind in components["relations"].kinds]
            names += [f"relations_{kind}_last" for kind in components["relations"].kinds]
        if "dense" in components:
            names += list(TEXT_FEATURES)
        return names

    def features(self, requests: Sequence[Request], candidates: np.ndarray,
                 components: Mapping[str, object]) -> np.ndarray:
        """[n_requests, n_candidates, len(feature_names(components))]; padding (-1) gets zeros."""
        candidates = np.asarray(candidates, dtype=np.int64)
        padding = candidates < 0
        safe = np.where(padding, 0, candidates)
        lengths = np.array([len(request.history) for request in requests], dtype=np.float32)
        columns = [self.item_table[safe], np.broadcast_to(np.log1p(lengths)[:, None, None], safe.shape + (1,))]
        if "itemcf" in components:
            columns.append(_last_item_similarity(components["itemcf"].similarity, requests, safe)[..., None])
        if "relations" in components:
            relations = components["relations"]
            last_only = [Request(history=request.history[-1:]) for request in requests]
            for chosen in (requests, last_only):
                kinds = relations.kind_scores(chosen, safe) if relations.kinds else {}
                columns += [np.asarray(kinds[kind], dtype=np.float32)[..., None] for kind in relations.kinds]
        if "dense" in components:
            columns.append(_text_similarities(components["dense"].item_embeddings, requests, safe))
        out = np.concatenate([np.asarray(column, dtype=np.float32) for column in columns], axis=2)
        out[padding] = 0.0
        return out

    stack_features = features  # what ranking.tasks.stack_inputs calls on either matcher
    stack_names = feature_names


def _last_item_similarity(similarity, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
    """Item-CF similarity of each candidate to the request's last history item alone."""
    out = np.zeros(candidates.shape, dtype=np.float32)
    for row, request in enumerate(requests):
        if request.history and 0 <= request.history[-1] < similarity.shape[0]:
            out[row] = similarity[request.history[-1]].toarray()[0, candidates[row]]
    return out


def _text_similarities(embeddings: np.ndarray, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
    """Cosine of each candidate to the last history item, and the largest and the mean over the latest ones."""
    out = np.zeros(candidates.shape + (len(TEXT_FEATURES),), dtype=np.float32)
    for row, request in enumerate(requests):
        latest = np.asarray(request.history[-TEXT_HISTORY_ITEMS:], dtype=np.int64)
        if not len(latest):
            continue
        similarity = embeddings[candidates[row]] @ embeddings[latest].T  # candidates x latest
        out[row] = np.stack([similarity[:, -1], similarity.max(axis=1), similarity.mean(axis=1)], axis=1)
    return out
