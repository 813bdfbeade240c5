"""The sample shop generator: determinism, the contract, the defects it says it injected, a learnable signal."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core import contract, rawio
from pipelines.data.sources import sample
from pipelines.data.sources.sample import DEFECT_KINDS
from tests.conftest import params_section

SMALL = {"n_items": 300, "n_users": 150, "n_queries": 80, "days": 30}
FILES = ("catalog.csv", "events.csv", "queries.csv", "defects.csv")

EMAIL = re.compile(r"[a-z0-9._]+@[a-z0-9.-]+\.[a-z]{2,}")
PHONE = re.compile(r"(?:\+1 )?(?:\(\d{3}\) |\d{3}-)555-01\d\d")
CARD = re.compile(r"\d{4}([ -])\d{4}\1\d{4}\1\d{4}")
PII = {"pii_email": EMAIL, "pii_phone": PHONE, "pii_card": CARD}


def key(title: str) -> str:
    return " ".join(re.findall(r"[0-9a-z]+", unicodedata.normalize("NFKC", title).casefold()))


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def load(out: Path) -> dict:
    raw = {table: rawio.read_table(out, table) for table in contract.TABLES}
    manifest = pd.read_csv(out / sample.MANIFEST, dtype=str, keep_default_na=False)
    manifest["row"] = manifest["row"].astype(int)
    return {"out": out, "raw": raw, "frames": {t: r.frame for t, r in raw.items()}, "manifest": manifest}


def defects_of(shop: dict, table: str) -> pd.DataFrame:
    manifest = shop["manifest"]
    return manifest[manifest["table"] == table].set_index("row")


def clean_rows(shop: dict, table: str) -> pd.DataFrame:
    frame = shop["frames"][table]
    return frame.drop(index=defects_of(shop, table).index)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("small") / "raw"
    counts = sample.generate(params_section("sample", **SMALL), out)
    shop = load(out)
    shop["counts"] = counts
    shop["params"] = params_section("sample", **SMALL)
    return shop


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("default") / "raw"
    counts = sample.generate(params_section("sample"), out)
    shop = load(out)
    shop["counts"] = counts
    return shop


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        sample.generate(params_section("sample", seed=seed, **SMALL), tmp_path / name)
    for file in FILES:
        first = (tmp_path / "a" / file).read_bytes()
        assert first == (tmp_path / "b" / file).read_bytes(), file
        assert first != (tmp_path / "c" / file).read_bytes(), file


def test_tables_follow_the_contract_and_counts_match(small):
    assert set(small["counts"]) == set(contract.TABLES)
    for table in contract.TABLES:
        frame = small["frames"][table]
        assert list(frame.columns) == contract.columns(table)
        assert len(frame) == small["counts"][table] > 0
        header = (small["out"] / contract.file_name(table)).read_bytes().split(b"\n", 1)[0]
        assert header.decode("ascii") == ",".join(contract.columns(table))
    assert list(small["manifest"].columns) == list(sample.MANIFEST_COLUMNS)


def test_default_size_is_realistic_and_modest(default):
    counts = default["counts"]
    assert counts["catalog"] >= 2000 and 40_000 <= counts["events"] <= 100_000
    assert 600 * 6 <= counts["queries"] <= 600 * 13
    assert (default["out"] / "events.csv").stat().st_size < 10 * 2**20
    events = clean_rows(default, "events")
    share = events["event_type"].value_counts(normalize=True)
    assert share["view"] > share["click"] > share["add_to_cart"] > share["purchase"] > 0.01
    assert events["user_id"].nunique() > 900 and events["item_id"].nunique() > 1500
    per_user = events.groupby("user_id").size()
    assert per_user.max() > 5 * per_user.median()  # activity is skewed


@pytest.mark.parametrize("shop_name", ["small", "default"])
def test_every_kind_is_injected_at_the_rate_one_kind_per_row(shop_name, request):
    shop = request.getfixturevalue(shop_name)
    manifest = shop["manifest"]
    assert not manifest.duplicated(["table", "row"]).any()
    for table, kinds in DEFECT_KINDS.items():
        rows = defects_of(shop, table)
        assert set(rows["kind"]) == set(kinds)
        assert (rows["field"] == rows["kind"].map(sample.DEFECT_FIELDS[table])).all()
        assert rows.index.max() < len(shop["frames"][table])
        assert len(rows) / len(shop["frames"][table]) >= 0.02, table
        per_kind = rows["kind"].value_counts()
        assert per_kind.max() <= 3 * per_kind.min() + 12, per_kind  # spread roughly evenly


def test_zero_rate_injects_nothing(tmp_path):
    sample.generate(params_section("sample", defect_rate=0.0, **SMALL), tmp_path)
    shop = load(tmp_path)
    assert shop["manifest"].empty
    for table in contract.TABLES:
        (tmp_path / contract.file_name(table)).read_bytes().decode("utf-8")  # all valid UTF-8
        assert shop["raw"][table].reencoded == []
        assert not shop["frames"][table].duplicated().any()


def test_catalog_defects_are_where_the_manifest_says(small):
    catalog = small["frames"]["catalog"]
    reencoded = set(small["raw"]["catalog"].reencoded)
    rows = defects_of(small, "catalog")
    referenced = set(small["frames"]["events"]["item_id"]) | set(small["frames"]["queries"]["item_id"])
    duplicated = catalog.fillna("").duplicated(keep="first")
    base_ids = set(catalog.drop(index=rows.index[rows["kind"].isin(
        ["exact_duplicate", "near_duplicate", "missing_title", "negative_price", "nan_price"])])["item_id"])
    for row, defect in rows.iterrows():
        item = catalog.loc[row]
        kind, expected = defect["kind"], defect["expected"]
        if kind == "exact_duplicate":
            assert duplicated[row] and item["item_id"] in base_ids
        elif kind == "near_duplicate":
            original = catalog[catalog["item_id"] == expected].iloc[0]
            assert item["item_id"] not in base_ids and (catalog["item_id"] == item["item_id"]).sum() == 1
            assert (item["brand"], item["category"]) == (original["brand"], original["category"])
            assert item["title"] != original["title"] and key(item["title"]) == key(original["title"])
        elif kind in ("missing_title", "negative_price", "nan_price"):
            assert item["item_id"] not in base_ids and item["item_id"] not in referenced
            if kind == "missing_title":
                assert item["title"] is None and float(item["price"]) >= 0
            elif kind == "negative_price":
                assert re.fullmatch(r"-\d+\.\d\d", item["price"]) and item["title"]
            else:
                assert item["price"] is None and item["title"]  # the raw "NaN", read as missing
        elif kind == "invalid_utf8":
            assert (row, "title") in reencoded and item["title"] == expected and not expected.isascii()
        elif kind == "mojibake":
            assert (row, "title") not in reencoded and item["title"] != expected
            assert item["title"] == expected.encode("utf-8").decode("cp1252")
            assert item["title"].encode("cp1252").decode("utf-8") == expected
        else:
            pytest.fail(f"unexpected kind {kind}")
    # The only bytes that are not UTF-8 are the invalid_utf8 titles.
    assert reencoded == {(row, "title") for row in rows.index[rows["kind"] == "invalid_utf8"]}


def test_clean_catalog_rows_are_well_formed_and_unique_within_a_brand(small):
    catalog = small["frames"]["catalog"].copy()
    rows = defects_of(small, "catalog")
    repaired = rows[rows["kind"].isin(["invalid_utf8", "mojibake"])]
    catalog.loc[repaired.index, "title"] = repaired["expected"]
    items = catalog.drop(index=rows.index.difference(repaired.index))
    assert items["item_id"].is_unique and items["title"].notna().all()
    assert items["price"].str.fullmatch(r"\d+\.\d\d").all() and (items["price"].astype(float) > 0).all()
    parts = items["category"].str.split(contract.CATEGORY_SEPARATOR, regex=False)
    assert (parts.str.len() == 2).all() and set(parts.str[0]) <= set(sample.TAXONOMY)
    assert items["category"].nunique() >= 25 and items["brand"].nunique() >= 40
    keys = items["brand"] + "|" + items["title"].map(key)
    assert keys.is_unique
    share_non_ascii = (~items["title"].map(str.isascii)).mean()
    assert 0.02 <= share_non_ascii <= 0.15


def test_event_defects_are_where_the_manifest_says(small):
    events = small["frames"]["events"]
    catalog_ids = set(small["frames"]["catalog"]["item_id"])
    duplicated = events.fillna("").duplicated(keep="first")
    for row, defect in defects_of(small, "events").iterrows():
        event = events.loc[row]
        kind = defect["kind"]
        if kind == "exact_duplicate":
            assert duplicated[row]
        elif kind == "unknown_item":
            assert event["item_id"] not in catalog_ids
        elif kind == "broken_timestamp":
            assert pd.isna(pd.to_datetime(event["timestamp"], utc=True, format="ISO8601", errors="coerce"))
        elif kind == "offset_timestamp":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", event["timestamp"])
            assert not event["timestamp"].endswith(("+00:00", "Z")) and defect["expected"].endswith("Z")
            assert pd.Timestamp(event["timestamp"]) == pd.Timestamp(defect["expected"])
        elif kind == "invalid_event_type":
            assert event["event_type"] not in contract.EVENT_TYPES and event["event_type"]
        elif kind == "missing_user":
            assert event["user_id"] is None
        else:
            pytest.fail(f"unexpected kind {kind}")


def test_clean_events_are_valid_in_the_window_and_sessionizable(small):
    params = small["params"]
    events = clean_rows(small, "events")
    catalog_ids = set(clean_rows(small, "catalog")["item_id"]) | set(small["frames"]["catalog"]["item_id"])
    assert events["event_type"].isin(contract.EVENT_TYPES).all() and events["user_id"].notna().all()
    assert events["item_id"].isin(catalog_ids).all() and events["event_id"].is_unique
    assert events["timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    ts = pd.to_datetime(events["timestamp"], utc=True, format="ISO8601")
    start = pd.Timestamp(params.start_date, tz="UTC")
    assert ts.min() >= start and ts.max() < start + pd.Timedelta(days=params.days)
    frame = events.assign(ts=ts).sort_values(["user_id", "ts", "event_id"])
    gap = frame.groupby("user_id")["ts"].diff()
    same_session = frame["session_id"] == frame["session_id"].shift()
    assert (gap[same_session] <= pd.Timedelta(minutes=30)).all()
    assert (gap[~same_session].dropna() > pd.Timedelta(minutes=30)).all()
    # The funnel: a purchase follows an add_to_cart of the same item in the same session.
    carts = set(zip(frame.loc[frame["event_type"] == "add_to_cart", "session_id"],
                    frame.loc[frame["event_type"] == "add_to_cart", "item_id"]))
    buys = frame[frame["event_type"] == "purchase"]
    assert np.mean([pair in carts for pair in zip(buys["session_id"], buys["item_id"])]) > 0.9


def test_near_duplicates_are_referenced_by_later_events(small):
    catalog = small["frames"]["catalog"]
    near = defects_of(small, "catalog").query("kind == 'near_duplicate'")
    new_ids = dict(zip(catalog.loc[near.index, "item_id"], near["expected"]))
    events = clean_rows(small, "events")
    ts = pd.to_datetime(events["timestamp"], utc=True)
    on_new = events["item_id"].isin(list(new_ids))
    assert on_new.sum() > 0
    # The original id is used before the re-listing, the new one after it.
    for new_id, original in new_ids.items():
        if (events["item_id"] == new_id).any():
            first_new = ts[events["item_id"] == new_id].min()
            assert ts[events["item_id"] == original].min() < first_new


def test_query_defects_are_where_the_manifest_says(small):
    queries = small["frames"]["queries"]
    reencoded = set(small["raw"]["queries"].reencoded)
    catalog_ids = set(small["frames"]["catalog"]["item_id"])
    duplicated = queries.fillna("").duplicated(keep="first")
    rows = defects_of(small, "queries")
    for row, defect in rows.iterrows():
        query = queries.loc[row]
        kind, expected = defect["kind"], defect["expected"]
        if kind == "exact_duplicate":
            assert duplicated[row]
        elif kind in PII:
            found = [m.group() for m in PII[kind].finditer(query["query"])]
            assert len(found) == 1, query["query"]
            assert query["query"].replace(found[0], sample.PII_TOKENS[kind]) == expected
            assert not any(p.search(expected) for p in PII.values())
            if kind == "pii_card":
                assert luhn_ok(re.sub(r"\D", "", found[0]))
        elif kind == "unknown_item":
            assert query["item_id"] not in catalog_ids
        elif kind == "bad_relevance":
            value = pd.to_numeric(query["relevance"], errors="coerce")
            assert pd.isna(value) or not 0 <= value <= 3
        elif kind == "invalid_utf8":
            assert (row, "query") in reencoded and query["query"] == expected and not expected.isascii()
        else:
            pytest.fail(f"unexpected kind {kind}")
    assert reencoded == {(row, "query") for row in rows.index[rows["kind"] == "invalid_utf8"]}


def test_clean_queries_judge_several_items_with_graded_relevance(small):
    queries = clean_rows(small, "queries")
    assert small["frames"]["queries"]["query_id"].nunique() == small["params"].n_queries
    assert not queries.duplicated(["query_id", "item_id"]).any()
    assert queries.groupby("query_id")[["query", "user_id", "timestamp"]].nunique(dropna=False).le(1).all().all()
    judged = queries.groupby("query_id").size()
    assert judged.between(4, 12).all() and judged.mean() > 7
    relevance = queries["relevance"].astype(float)
    assert relevance.between(0, 3).all() and relevance.nunique() >= 8
    assert (queries.assign(r=relevance).groupby("query_id")["r"].max() >= 2.33).mean() > 0.9
    assert (relevance == 0).mean() > 0.1
    anonymous = queries.groupby("query_id")["user_id"].first().isna().mean()
    assert 0.05 <= anonymous <= 0.3
    texts = queries.groupby("query_id")["query"].first()
    assert texts.is_unique and (texts == texts.str.lower()).all()
    assert not texts.map(lambda text: any(p.search(text) for p in PII.values())).any()


def test_user_tastes_beat_global_popularity(default):
    """A per-user category-affinity recommender beats popularity on the last 20 % of the interactions."""
    catalog = default["frames"]["catalog"].drop_duplicates("item_id")
    category = dict(zip(catalog["item_id"], catalog["category"]))
    near = defects_of(default, "catalog").query("kind == 'near_duplicate'")
    remap = dict(zip(default["frames"]["catalog"].loc[near.index, "item_id"], near["expected"]))
    events = clean_rows(default, "events").copy()
    events["item_id"] = events["item_id"].replace(remap)
    events["ts"] = pd.to_datetime(events["timestamp"], utc=True)
    events["category"] = events["item_id"].map(category)
    cut = events["ts"].quantile(0.8)
    train = events[events["ts"] < cut]
    test = events[(events["ts"] >= cut) & events["event_type"].isin(["click", "purchase"])
                  & events["user_id"].isin(train["user_id"])]
    truth = test.groupby("user_id")["item_id"].agg(set)
    assert len(truth) > 300

    popularity = train.groupby("item_id").size()
    top_popular = set(popularity.nlargest(10).index)
    weight = train["event_type"].map({"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4})
    affinity = train.assign(w=weight).groupby(["user_id", "category"])["w"].sum().unstack(fill_value=0)
    affinity = affinity.div(affinity.sum(axis=1), axis=0)
    items = popularity.index.to_numpy()
    columns = affinity.columns.get_indexer(pd.Series(items).map(category))
    score = affinity.to_numpy()[:, columns] * np.log1p(popularity.to_numpy())[None, :]
    top = np.argpartition(-score, 10, axis=1)[:, :10]
    recommended = {user: set(items[top[k]]) for k, user in enumerate(affinity.index)}

    hit_popular = np.mean([bool(seen & top_popular) for seen in truth])
    hit_taste = np.mean([bool(seen & recommended[user]) for user, seen in truth.items()])
    assert hit_taste > hit_popular + 0.15 and hit_taste > 1.5 * hit_popular, (hit_taste, hit_popular)
