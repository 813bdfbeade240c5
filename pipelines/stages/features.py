"""Features: the clean tables as the models see them.

items.parquet        one row per catalog item, in the fixed order that gives each its position
interactions.parquet user, item position, timestamp, event type, weight, split (train/valid/test:
                     features.interaction_split, see split_interactions)
judgments.parquet    query, item position, relevance, split (by a seeded permutation of unique queries)
user_profiles.parquet per user, from the training split only: activity, favourite category, price level
candidates.parquet   (given split only) user, item, split, candidates: each held-out interaction's given
                     candidates, its item among the source's negatives in a seeded random order
relations.parquet    (when the source has item relations) item, related_item, relation, as positions
The held-out splits are decided here once, so every later stage reads the same ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.config import FeaturesParams, Settings
from pipelines.core.errors import DataError
from pipelines.core.items import Items
from pipelines.core.logs import get_logger
from pipelines.data.dataset import SPLITS, normalize_query

log = get_logger(__name__)


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


def split_leave_one_out(users: pd.Series) -> pd.Series:
    """Rows in time order: each user's last row is test, the one before valid, the rest train; a user
    with fewer than 3 rows stays in train (nothing would be left to learn from)."""
    grouped = users.groupby(users, sort=False)
    from_end = grouped.cumcount(ascending=False).to_numpy()
    enough = grouped.transform("size").to_numpy() >= 3
    return pd.Series(np.select([enough & (from_end == 0), enough & (from_end == 1)], ["test", "valid"], "train"),
                     index=users.index)


GIVEN_SPLITS = {"dev": "valid", "valid": "valid", "test": "test"}  # a holdout table's split names


def split_given(event_ids: pd.Series, holdout: pd.DataFrame | None) -> pd.Series:
    """The split the source's holdout table gives each event (dev -> valid, test -> test); others train."""
    if holdout is None:
        raise DataError("features.interaction_split is given, but the clean folder has no holdout table "
                        "(a source such as rechorus writes holdout.csv)")
    unknown = sorted(set(holdout["split"]) - set(GIVEN_SPLITS))
    if unknown:
        raise DataError(f"holdout table: unknown split(s) {', '.join(unknown)} (expected dev, test)")
    given = dict(zip(holdout["event_id"], holdout["split"].map(GIVEN_SPLITS)))
    return event_ids.map(given).fillna("train")


def split_interactions(frame: pd.DataFrame, params: FeaturesParams, holdout: pd.DataFrame | None) -> pd.Series:
    if not len(frame):
        return pd.Series([], index=frame.index, dtype=object)
    if params.interaction_split == "leave_one_out":
        return split_leave_one_out(frame["user"])
    if params.interaction_split == "given":
        return split_given(frame["event_id"], holdout)
    return split_by_time(frame["timestamp"], params.valid_days, params.test_days)


def given_candidates(interactions: pd.DataFrame, event_ids: pd.Series, holdout: pd.DataFrame,
                     positions: dict[str, int], seed: int) -> pd.DataFrame:
    """Each held-out interaction's candidates: its item and the given negatives (repeats kept, unknown ids
    dropped), shuffled with a seeded generator so that neither order nor ties favour the item."""
    negatives = dict(zip(holdout["event_id"], holdout["neg_items"].str.split()))
    rng = np.random.default_rng(seed)
    held = interactions.index[interactions["split"] != "train"]
    rows = []
    for index in held:
        listed = [positions[item] for item in negatives.get(event_ids[index], []) if item in positions]
        candidates = np.array([interactions.at[index, "item"], *listed], dtype=np.int64)
        rows.append(candidates[rng.permutation(len(candidates))])
    return pd.DataFrame({"user": interactions.loc[held, "user"].to_numpy(), "item": interactions.loc[held, "item"].to_numpy(),
                         "split": interactions.loc[held, "split"].to_numpy(), "candidates": rows})


def relation_table(relations: pd.DataFrame, positions: dict[str, int]) -> pd.DataFrame:
    frame = pd.DataFrame({"item": relations["item_id"].map(positions), "related_item": relations["related_item_id"].map(positions),
                          "relation": relations["relation"]}).dropna(subset=["item", "related_item"])
    return frame.astype({"item": "int64", "related_item": "int64"}).drop_duplicates().reset_index(drop=True)


def item_table(catalog: pd.DataFrame) -> pd.DataFrame:
    items = Items.from_catalog(catalog)
    return pd.DataFrame({"position": np.arange(len(items)), "item_id": items.ids, "title": items.titles,
                         "text": items.texts, "category": items.categories, "brand": items.brands,
                         "price": items.prices if items.prices is not None else np.nan})


def interaction_table(events: pd.DataFrame, positions: dict[str, int], params: FeaturesParams,
                      holdout: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The interactions split (features.interaction_split), and for the given split each held-out one's
    candidates (given_candidates); the event ids are not kept (a source's ids may name the split)."""
    unknown = sorted(set(events["event_type"]) - set(params.event_weights))
    if unknown:
        raise DataError(f"params.yaml: features.event_weights has no weight for event type(s) {', '.join(unknown)}")
    frame = pd.DataFrame({
        "event_id": events["event_id"].to_numpy(),
        "user": events["user_id"].to_numpy(),
        "item": events["item_id"].map(positions).to_numpy(),
        "timestamp": events["timestamp"].to_numpy(),
        "event_type": events["event_type"].to_numpy(),
        "weight": events["event_type"].map(params.event_weights).to_numpy(dtype=float),
    })
    frame = frame.dropna(subset=["item"]).astype({"item": "int64"}).sort_values(["timestamp", "user"], kind="stable")
    frame = frame.reset_index(drop=True)
    frame["split"] = split_interactions(frame, params, holdout)
    candidates = (given_candidates(frame, frame["event_id"], holdout, positions, params.seed)
                  if params.interaction_split == "given" else None)
    return frame.drop(columns="event_id"), candidates


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
    extra = {name: pd.read_parquet(clean_dir / f"{name}.parquet") for name in ("holdout", "relations")
             if (clean_dir / f"{name}.parquet").exists()}
    items = item_table(tables["catalog"])
    positions = dict(zip(items["item_id"], items["position"]))
    interactions, candidates = interaction_table(tables["events"], positions, settings.features, extra.get("holdout"))
    judgments = judgment_table(tables["queries"], positions, settings.features)
    profiles = user_profiles(interactions, items)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    optional = {"candidates": candidates,
                "relations": relation_table(extra["relations"], positions) if "relations" in extra else None}
    for name, frame in (("items", items), ("interactions", interactions), ("judgments", judgments),
                        ("user_profiles", profiles), *optional.items()):
        if frame is not None:
            frame.to_parquet(out_dir / f"{name}.parquet", index=False)
    summary = {
        "items": len(items), "users": int(interactions["user"].nunique()),
        "interactions": {split: int((interactions["split"] == split).sum()) for split in SPLITS},
        "queries": {split: int(judgments.loc[judgments["split"] == split, "query_id"].nunique()) for split in SPLITS},
        "interaction_split": settings.features.interaction_split,
    }
    if candidates is not None:
        summary["given_candidates"] = {split: int((candidates["split"] == split).sum()) for split in ("valid", "test")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("features built", extra=summary)
    return summary


