"""Features: the clean tables as the models see them.

items.parquet        one row per catalog item, in the fixed order that gives each its position
interactions.parquet user, item position, timestamp, event type, weight, split (train/valid/test by time)
judgments.parquet    query, item position, relevance, split (by a seeded permutation of unique queries)
user_profiles.parquet per user, from the training split only: activity, favourite category, price level
The held-out splits are decided here once, so every later stage reads the same ones.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import FeaturesParams, Settings
from pipelines.errors import DataError
from pipelines.logs import get_logger
from pipelines.rankers.base import Items, Request, TrainingData

log = get_logger(__name__)

SPLITS = ("train", "valid", "test")
_SPACES = re.compile(r"\s+")


def normalize_query(query: str) -> str:
    return _SPACES.sub(" ", query.casefold()).strip()


def split_queries(queries: pd.Series, valid_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Split label per row: unique normalized queries in a seeded random order, test first, then valid."""
    normalized = queries.map(normalize_query)
    unique = np.array(sorted(normalized.unique()))
    order = unique[np.random.default_rng(seed).permutation(len(unique))]
    n_test = int(round(len(unique) * test_fraction))
    n_valid = int(round(len(unique) * valid_fraction))
    label = {query: "test" for query in order[:n_test]}
    label.update({query: "valid" for query in order[n_test:n_test + n_valid]})
    return normalized.map(lambda query: label.get(query, "train"))


def split_by_time(timestamps: pd.Series, valid_days: int, test_days: int) -> pd.Series:
    end = timestamps.max()
    test_start = end - pd.Timedelta(days=test_days)
    valid_start = test_start - pd.Timedelta(days=valid_days)
    return pd.Series(np.select([timestamps > test_start, timestamps > valid_start], ["test", "valid"], "train"),
                     index=timestamps.index)


def item_table(catalog: pd.DataFrame) -> pd.DataFrame:
    items = Items.from_catalog(catalog)
    return pd.DataFrame({"position": np.arange(len(items)), "item_id": items.ids, "title": items.titles,
                         "text": items.texts, "category": items.categories, "brand": items.brands,
                         "price": items.prices if items.prices is not None else np.nan})


def interaction_table(events: pd.DataFrame, positions: dict[str, int], params: FeaturesParams) -> pd.DataFrame:
    unknown = sorted(set(events["event_type"]) - set(params.event_weights))
    if unknown:
        raise DataError(f"params.yaml: features.event_weights has no weight for event type(s) {', '.join(unknown)}")
    frame = pd.DataFrame({
        "user": events["user_id"].to_numpy(),
        "item": events["item_id"].map(positions).to_numpy(),
        "timestamp": events["timestamp"].to_numpy(),
        "event_type": events["event_type"].to_numpy(),
        "weight": events["event_type"].map(params.event_weights).to_numpy(dtype=float),
    })
    frame = frame.dropna(subset=["item"]).astype({"item": "int64"}).sort_values(["timestamp", "user"], kind="stable")
    frame["split"] = split_by_time(frame["timestamp"], params.valid_days, params.test_days) if len(frame) else []
    return frame.reset_index(drop=True)


def judgment_table(queries: pd.DataFrame, positions: dict[str, int], params: FeaturesParams) -> pd.DataFrame:
    frame = pd.DataFrame({
        "query_id": queries["query_id"].to_numpy(),
        "query": queries["query"].to_numpy(),
        "item": queries["item_id"].map(positions).to_numpy(),
        "relevance": queries["relevance"].to_numpy(dtype=float),
    }).dropna(subset=["item"]).astype({"item": "int64"})
    frame["split"] = (split_queries(frame["query"], params.query_valid_fraction, params.query_test_fraction, params.seed)
                      if len(frame) else [])
    return frame.reset_index(drop=True)


def user_profiles(interactions: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    train = interactions[interactions["split"] == "train"].merge(
        items[["position", "category", "price"]], left_on="item", right_on="position")
    if train.empty:
        return pd.DataFrame(columns=["user", "events", "purchases", "favourite_category", "mean_price"])
    grouped = train.groupby("user")
    return pd.DataFrame({
        "events": grouped.size(),
        "purchases": grouped["event_type"].apply(lambda types: int((types == "purchase").sum())),
        "favourite_category": grouped["category"].agg(lambda c: c.value_counts().index[0]),
        "mean_price": grouped["price"].mean(),
    }).reset_index()


def build_features(clean_dir: Path, out_dir: Path, settings: Settings) -> dict:
    clean_dir, out_dir = Path(clean_dir), Path(out_dir)
    tables = {}
    for table in ("catalog", "events", "queries"):
        path = clean_dir / f"{table}.parquet"
        if not path.exists():
            raise DataError(f"{path}: not found (run clean first)")
        tables[table] = pd.read_parquet(path)
    items = item_table(tables["catalog"])
    positions = dict(zip(items["item_id"], items["position"]))
    interactions = interaction_table(tables["events"], positions, settings.features)
    judgments = judgment_table(tables["queries"], positions, settings.features)
    profiles = user_profiles(interactions, items)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for name, frame in (("items", items), ("interactions", interactions), ("judgments", judgments),
                        ("user_profiles", profiles)):
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
    summary = {
        "items": len(items), "users": int(interactions["user"].nunique()),
        "interactions": {split: int((interactions["split"] == split).sum()) for split in SPLITS},
        "queries": {split: int(judgments.loc[judgments["split"] == split, "query_id"].nunique()) for split in SPLITS},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("features built", extra=summary)
    return summary


def load_training_data(features_dir: Path, splits: tuple[str, ...] = ("train",)) -> TrainingData:
    """The items and the interactions and judgments of the given splits, nothing else."""
    features_dir = Path(features_dir)
    items = pd.read_parquet(features_dir / "items.parquet")
    interactions = pd.read_parquet(features_dir / "interactions.parquet")
    judgments = pd.read_parquet(features_dir / "judgments.parquet")
    return TrainingData(
        items=Items(items["item_id"].to_numpy(), items["title"].tolist(), items["text"].tolist(),
                    items["category"].tolist(), items["brand"].tolist(), items["price"].to_numpy(dtype=float)),
        interactions=interactions[interactions["split"].isin(splits)].reset_index(drop=True),
        judgments=judgments[judgments["split"].isin(splits)].reset_index(drop=True),
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


def recommend_requests(features_dir: Path, split: str) -> tuple[list[Request], list[dict[int, float]]]:
    """One request per user active in the split: the history before it, and the new items the user
    then clicked, carted or bought as gains (1 each)."""
    interactions = pd.read_parquet(Path(features_dir) / "interactions.parquet")
    order = {name: rank for rank, name in enumerate(SPLITS)}
    before = interactions[interactions["split"].map(order) < order[split]]
    histories = before.groupby("user", sort=False)["item"].agg(tuple)
    window = interactions[(interactions["split"] == split) & interactions["event_type"].isin(POSITIVE_EVENTS)]
    requests, gains = [], []
    for user, targets in window.groupby("user", sort=True)["item"]:
        history = histories.get(user, ())
        new_items = set(targets.astype(int)) - set(history)
        if new_items:
            requests.append(Request(history=tuple(int(item) for item in history), user=user))
            gains.append({item: 1.0 for item in new_items})
    return requests, gains
