"""The adapters on the real datasets of ../shared/datasets: counts from its README and invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core import contract
from pipelines.core.errors import DataError
from pipelines.core.rawio import read_table
from pipelines.data.sources import home_depot, rechorus, sequences

pytestmark = pytest.mark.real_data

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
if not DATASETS.is_dir():
    pytest.skip(f"{DATASETS} is absent", allow_module_level=True)

ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
# README of ../shared/datasets: users and items of each ID-only sequence set
SEQUENCE_COUNTS = {
    "Beauty.txt": (22_363, 12_101),
    "Sports_and_Outdoors.txt": (35_598, 18_357),
    "Toys_and_Games.txt": (19_412, 11_924),
}


def read_all(out: Path) -> dict[str, pd.DataFrame]:
    return {table: read_table(out, table).frame for table in contract.TABLES if not header_only(out, table)}


def header_only(out: Path, table: str) -> bool:
    with open(out / contract.file_name(table), encoding="utf-8") as handle:
        first, second = handle.readline(), handle.readline()
    assert first.rstrip("\n") == ",".join(contract.columns(table))
    return second == ""


@pytest.fixture(scope="module")
def home_depot_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("home_depot")
    counts = home_depot.convert(DATASETS / "home-depot-search-relevance", out)
    return out, counts


@pytest.fixture(scope="module")
def office_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("office")
    counts = rechorus.convert(DATASETS / "amazon-office", out)
    return out, counts


def test_home_depot_counts(home_depot_out):
    out, counts = home_depot_out
    assert counts == {"catalog": 54_667, "events": 0, "queries": 74_067}
    assert header_only(out, "events")
    tables = read_all(out)
    catalog, queries = tables["catalog"], tables["queries"]
    assert len(catalog) == 54_667 and catalog["item_id"].is_unique
    assert catalog["title"].notna().all()
    assert len(queries) == 74_067
    assert queries["query"].nunique() == 11_795  # README: queries by raw search_term
    # normalized (casefold, collapsed whitespace): "fence  mesh" and "slide  bolt" merge
    assert queries["query_id"].nunique() == 11_793
    assert queries["query_id"].str.fullmatch(r"hd\d{5}").all()
    assert set(queries["item_id"]) == set(catalog["item_id"])
    relevance = queries["relevance"].astype(float)
    assert relevance.between(0, 2).all() and relevance.max() == 2 and relevance.min() == 0
    assert queries["user_id"].isna().all() and queries["timestamp"].isna().all()
    assert json.loads((out / "source.json").read_text())["tables_absent"] == ["events"]


def test_home_depot_latin1_kept_byte_for_byte(home_depot_out):
    out, _ = home_depot_out
    table = read_table(out, "catalog")
    assert table.reencoded == []  # written as UTF-8
    titles = table.frame["title"]
    # known double mojibake (UTF-8 -> Windows-1252 -> Mac Roman), left for the clean stage
    assert titles.str.contains("å¡", regex=False).sum() > 50
    # Latin-1 decoding is lossless: the source bytes come back exactly
    raw = (DATASETS / "home-depot-search-relevance" / "train.csv").read_bytes()
    sample = titles[titles.str.contains("å¡", regex=False)].iloc[0]
    assert sample.encode("latin-1") in raw


def test_office_counts(office_out):
    out, counts = office_out
    folder = DATASETS / "amazon-office"
    train = sum(1 for _ in open(folder / "train.csv")) - 1
    assert counts == {"catalog": 2_420, "events": train + 2 * 4_905, "queries": 0}
    assert header_only(out, "queries")
    tables = read_all(out)
    catalog, events = tables["catalog"], tables["events"]
    assert catalog["item_id"].is_unique and catalog["title"].notna().all()
    assert catalog["category"].str.fullmatch(r"c\d+").all() and catalog["brand"].str.fullmatch(r"b\d+").all()
    assert events["user_id"].nunique() == 4_905
    assert events["item_id"].nunique() == 2_420
    assert set(events["item_id"]) <= set(catalog["item_id"])
    assert events["event_id"].is_unique
    assert events["timestamp"].str.fullmatch(ISO_UTC).all()
    assert (events["event_type"] == "purchase").all()


def test_office_protocol_files(office_out):
    out, _ = office_out
    holdout = pd.read_csv(out / "holdout.csv", dtype=str, keep_default_na=False)
    assert holdout["split"].value_counts().to_dict() == {"dev": 4_905, "test": 4_905}
    assert (holdout["neg_items"].str.split().str.len() == 99).all()
    relations = pd.read_csv(out / "relations.csv", dtype=str)
    assert set(relations["relation"]) == {"complement", "substitute"}
    assert len(relations) > 0
    marker = json.loads((out / "source.json").read_text())
    assert marker["extra_files"] == ["holdout.csv", "relations.csv"]


@pytest.mark.parametrize("name", sorted(SEQUENCE_COUNTS))
def test_sequences_counts(tmp_path, name):
    users, items = SEQUENCE_COUNTS[name]
    path = DATASETS / "amazon-sequences" / name
    counts = sequences.convert(path, tmp_path)
    lines = path.read_text().split()
    assert counts == {"catalog": items, "events": len(lines) - users, "queries": 0}
    assert header_only(tmp_path, "queries")
    tables = read_all(tmp_path)
    catalog, events = tables["catalog"], tables["events"]
    assert catalog["item_id"].is_unique
    assert (catalog["title"] == path.stem.replace("_", " ") + " item " + catalog["item_id"]).all()
    assert events["user_id"].nunique() == users
    assert set(events["item_id"]) == set(catalog["item_id"])
    assert events["event_id"].is_unique
    # ordinal timestamps keep each user's order
    stamps = pd.to_datetime(events["timestamp"], utc=True)
    same_user = events["user_id"].eq(events["user_id"].shift())
    assert (stamps.diff()[same_user] > pd.Timedelta(0)).all()


def test_sequences_folder_with_several_files_is_refused(tmp_path):
    with pytest.raises(DataError, match="Beauty.txt"):
        sequences.convert(DATASETS / "amazon-sequences", tmp_path)
