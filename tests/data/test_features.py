"""The held-out splits are decided once, in features, and never overlap."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.data.dataset import load_training_data, normalize_query
from pipelines.stages.features import build_features, split_queries


@pytest.fixture(scope="module")
def features(tiny_run, tiny_settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    summary = build_features(tiny_run["clean"], out, tiny_settings)
    return out, summary


def test_time_splits_are_ordered_and_cover_every_interaction(features, tiny_run):
    out, summary = features
    interactions = pd.read_parquet(out / "interactions.parquet")
    events = pd.read_parquet(tiny_run["clean"] / "events.parquet")
    assert len(interactions) == len(events) == sum(summary["interactions"].values())
    last = interactions.groupby("split")["timestamp"].agg(["min", "max"])
    assert last.loc["train", "max"] <= last.loc["valid", "min"] and last.loc["valid", "max"] <= last.loc["test", "min"]
    assert all(summary["interactions"][split] > 0 for split in ("train", "valid", "test"))


def test_query_splits_never_share_a_normalized_query(features):
    judgments = pd.read_parquet(features[0] / "judgments.parquet")
    splits_per_query = judgments.assign(norm=judgments["query"].map(normalize_query)).groupby("norm")["split"].nunique()
    assert (splits_per_query == 1).all()
    assert set(judgments["split"]) == {"train", "valid", "test"}


def test_split_queries_is_seeded_and_sized():
    queries = pd.Series([f"Query {i}" for i in range(100)] + ["query  1"])
    first = split_queries(queries, 0.1, 0.2, seed=0)
    assert first.tolist() == split_queries(queries, 0.1, 0.2, seed=0).tolist()
    assert first.tolist() != split_queries(queries, 0.1, 0.2, seed=1).tolist()
    assert (first[:100] == "test").sum() == 20 and (first[:100] == "valid").sum() == 10
    assert first[1] == first[100]  # "Query 1" and "query  1" normalize alike


def test_training_data_holds_only_the_asked_splits(features):
    data = load_training_data(features[0], ("train",))
    assert set(data.interactions["split"]) == {"train"} and set(data.judgments["split"]) == {"train"}
    assert data.interactions["item"].between(0, len(data.items) - 1).all()
    assert "|" in data.items.texts[0] and len(data.items.titles) == len(data.items)


def test_profiles_come_from_training_interactions_only(features):
    out, _ = features
    profiles = pd.read_parquet(out / "user_profiles.parquet")
    interactions = pd.read_parquet(out / "interactions.parquet")
    train_counts = interactions[interactions["split"] == "train"].groupby("user").size()
    assert profiles.set_index("user")["events"].sort_index().equals(train_counts.sort_index())
