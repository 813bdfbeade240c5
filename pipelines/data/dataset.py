"""The feature tables as the later stages read them: training data, and the requests of a split with their gains."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipelines.core.items import Items, Request, TrainingData

SPLITS = ("train", "valid", "test")


_SPACES = re.compile(r"\s+")


def normalize_query(query: str) -> str:
    return _SPACES.sub(" ", query.casefold()).strip()


def load_items(features_dir: Path) -> Items:
    """The catalog in its fixed order (items.parquet)."""
    items = pd.read_parquet(Path(features_dir) / "items.parquet")
    return Items(items["item_id"].to_numpy(), items["title"].tolist(), items["text"].tolist(),
                 items["category"].tolist(), items["brand"].tolist(), items["price"].to_numpy(dtype=float))


def load_training_data(features_dir: Path, splits: tuple[str, ...] = ("train",)) -> TrainingData:
    """The items, the interactions and judgments of the given splits, and the source's item relations
    (relations.parquet, when it has them: they describe items, not users), nothing else."""
    features_dir = Path(features_dir)
    interactions = pd.read_parquet(features_dir / "interactions.parquet")
    judgments = pd.read_parquet(features_dir / "judgments.parquet")
    relations = features_dir / "relations.parquet"
    return TrainingData(
        items=load_items(features_dir),
        interactions=interactions[interactions["split"].isin(splits)].reset_index(drop=True),
        judgments=judgments[judgments["split"].isin(splits)].reset_index(drop=True),
        relations=pd.read_parquet(relations) if relations.exists() else None,
    )


POSITIVE_EVENTS = ("click", "add_to_cart", "purchase")


def search_requests(features_dir: Path, split: str) -> tuple[list[Request], list[dict[int, float]]]:
    """One request per query of the split, with its graded judgments as gains."""
    judgments = pd.read_parquet(Path(features_dir) / "judgments.parquet")
    judgments = judgments[judgments["split"] == split]
    requests, gains = [], []
    for _, judged in judgments.groupby("query_id", sort=True):
        requests.append(Request(query=judged["query"].iloc[0]))
        gains.append(dict(zip(judged["item"].astype(int), judged["relevance"].astype(float))))
    return requests, gains


GIVEN_CANDIDATES = "candidates.parquet"  # features, given split: each held-out interaction's candidates


def recommend_requests(features_dir: Path, split: str) -> tuple[list[Request], list[dict[int, float]]]:
    """One request per user active in the split: the history before it (the earlier splits, oldest first),
    and the new items the user then clicked, carted or bought as gains (1 each); with leave-one-out that is
    each user's last (test) or second last (valid) item.

    When the features hold given candidates (features.interaction_split: given), one request per held-out
    interaction instead: its candidates are the given ones (Request.candidates), its gain its own item,
    kept even when the user had it before (the protocol ranks it among the given negatives regardless)."""
    interactions = pd.read_parquet(Path(features_dir) / "interactions.parquet")
    order = {name: rank for rank, name in enumerate(SPLITS)}
    before = interactions[interactions["split"].map(order) < order[split]]
    histories = before.groupby("user", sort=False)["item"].agg(tuple)
    given = Path(features_dir) / GIVEN_CANDIDATES
    if given.exists():
        rows = pd.read_parquet(given)
        rows = rows[rows["split"] == split].sort_values("user", kind="stable")
        requests = [Request(history=tuple(int(item) for item in histories.get(user, ())), user=user,
                            candidates=tuple(int(item) for item in candidates))
                    for user, candidates in zip(rows["user"], rows["candidates"])]
        return requests, [{int(item): 1.0} for item in rows["item"]]
    window = interactions[(interactions["split"] == split) & interactions["event_type"].isin(POSITIVE_EVENTS)]
    requests, gains = [], []
    for user, targets in window.groupby("user", sort=True)["item"]:
        history = histories.get(user, ())
        new_items = set(targets.astype(int)) - set(history)
        if new_items:
            requests.append(Request(history=tuple(int(item) for item in history), user=user))
            gains.append({item: 1.0 for item in new_items})
    return requests, gains


