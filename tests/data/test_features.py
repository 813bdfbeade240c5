"""The held-out splits are decided once, in features, and never overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import load_settings
from pipelines.core.errors import DataError
from pipelines.data.dataset import load_training_data, normalize_query, recommend_requests
from pipelines.stages.features import build_features, interaction_table, split_queries


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


def _events(sequences: dict[str, list[str]], prefix=lambda user, step, length: "e") -> pd.DataFrame:
    """One purchase per (user, step), the steps a minute apart on a clock every user shares (ordinal times)."""
    rows = [(f"{prefix(user, step, len(items))}-{user}-{step}", user, item, "purchase",
             pd.Timestamp("2000-01-01", tz="UTC") + pd.Timedelta(minutes=step), "")
            for user, items in sequences.items() for step, item in enumerate(items)]
    return pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "timestamp", "session_id"])


def features_params(**update):
    """The repository's features params with `update`."""
    return load_settings(Path(__file__).resolve().parents[2] / "params.yaml").features.model_copy(update=update)


SEQUENCES = {"u1": ["a", "b", "c", "d", "e"], "u2": ["c", "a", "e"], "u3": ["b", "d"], "u4": ["e", "d", "c", "b"]}
POSITIONS = {item: position for position, item in enumerate("abcdefgh")}


def _write(folder, interactions, candidates=None):
    folder.mkdir(parents=True, exist_ok=True)
    items = pd.DataFrame({"position": range(8), "item_id": list("abcdefgh"), "title": list("abcdefgh"),
                          "text": list("abcdefgh"), "category": "", "brand": "", "price": np.nan})
    items.to_parquet(folder / "items.parquet", index=False)
    interactions.to_parquet(folder / "interactions.parquet", index=False)
    if candidates is not None:
        candidates.to_parquet(folder / "candidates.parquet", index=False)
    return folder


def test_leave_one_out_holds_out_each_users_last_and_second_last_item(tmp_path):
    params = features_params(interaction_split="leave_one_out")
    interactions, candidates = interaction_table(_events(SEQUENCES), POSITIONS, params)
    assert candidates is None and "event_id" not in interactions
    for user, items in SEQUENCES.items():
        mine = interactions[interactions["user"] == user]
        expected = ["train"] * len(items) if len(items) < 3 else ["train"] * (len(items) - 2) + ["valid", "test"]
        assert mine["split"].tolist() == expected, user
        assert mine["item"].tolist() == [POSITIONS[item] for item in items]  # each user's order kept
    folder = _write(tmp_path / "loo", interactions)
    requests, gains = recommend_requests(folder, "test")
    assert [request.user for request in requests] == ["u1", "u2", "u4"]  # u3 has two items: train only
    for request, gain in zip(requests, gains):
        items = [POSITIONS[item] for item in SEQUENCES[request.user]]
        assert gain == {items[-1]: 1.0} and request.history == tuple(items[:-1])  # history = train + valid
        assert request.candidates == ()  # pooled from the full catalog by the components
    valid_requests, valid_gains = recommend_requests(folder, "valid")
    assert [(r.history, g) for r, g in zip(valid_requests, valid_gains)][0] == (
        (POSITIONS["a"], POSITIONS["b"], POSITIONS["c"]), {POSITIONS["d"]: 1.0})


def _holdout(sequences):
    """The last event of each user with three or more items is test, the one before it dev; 3 negatives each."""
    rows = []
    for user, items in sequences.items():
        if len(items) >= 3:
            for split, step in (("dev", len(items) - 2), ("test", len(items) - 1)):
                negatives = [item for item in "fghf"]  # repeats kept, as in the source
                rows.append((f"e-{user}-{step}", split, " ".join(negatives)))
    return pd.DataFrame(rows, columns=["event_id", "split", "neg_items"])


def test_given_split_follows_the_holdout_table_and_keeps_its_candidates(tmp_path):
    params = features_params(interaction_split="given", seed=3)
    events = _events(SEQUENCES)
    interactions, candidates = interaction_table(events, POSITIONS, params, _holdout(SEQUENCES))
    assert "event_id" not in interactions  # a source's event ids may name the split
    assert (interactions["split"] == "valid").sum() == 3 and (interactions["split"] == "test").sum() == 3
    assert set(interactions.loc[interactions["user"] == "u3", "split"]) == {"train"}
    assert len(candidates) == 6
    for row in candidates.itertuples():
        assert sorted(row.candidates.tolist()) == sorted([row.item] + [POSITIONS[i] for i in "fghf"])
    columns = [int(np.flatnonzero(row.candidates == row.item)[0]) for row in candidates.itertuples()]
    assert len(set(columns)) > 1, "the positive's slot is shuffled, not always first"
    again = interaction_table(events, POSITIONS, params, _holdout(SEQUENCES))[1]
    assert all((a == b).all() for a, b in zip(candidates["candidates"], again["candidates"]))  # seeded
    folder = _write(tmp_path / "given", interactions, candidates)
    requests, gains = recommend_requests(folder, "test")
    assert len(requests) == 3 and all(len(request.candidates) == 5 for request in requests)
    for request, gain in zip(requests, gains):
        items = [POSITIONS[item] for item in SEQUENCES[request.user]]
        assert gain == {items[-1]: 1.0} and request.history == tuple(items[:-1])


def test_given_split_needs_a_holdout_table():
    with pytest.raises(DataError, match="holdout"):
        interaction_table(_events(SEQUENCES), POSITIONS, features_params(interaction_split="given"))
