"""The sample shop through validate and clean: counts conserved, every defect accounted for, no PII left."""

from __future__ import annotations

import pandas as pd

from pipelines.core import contract
from pipelines.data.sources.sample import DEFECT_KINDS
from pipelines.stages.audit import audit_defects
from tests.data.pii_scan import find_pii, raw_pii_values


def test_counts_are_conserved_per_table(tiny_run):
    for table in contract.TABLES:
        counts = tiny_run["summary"][table]
        raw_rows = len(pd.read_csv(tiny_run["raw"] / f"{table}.csv", dtype=str, encoding_errors="replace"))
        assert counts["rows_in"] == raw_rows > 0
        assert counts["rows_in"] == counts["rows_valid"] + counts["rows_quarantined"]
        valid = pd.read_parquet(tiny_run["validated"] / "valid" / f"{table}.parquet")
        quarantined = pd.read_parquet(tiny_run["validated"] / "quarantine" / f"{table}.parquet")
        assert sorted(valid["_row"].tolist() + quarantined["_row"].tolist()) == list(range(raw_rows))
        assert quarantined["_reasons"].str.len().gt(0).all()


def test_every_injected_defect_is_quarantined_or_repaired(tiny_run, tiny_settings):
    report = audit_defects(tiny_run["raw"], tiny_run["validated"], tiny_run["clean"], tiny_settings)
    seen = {(row["table"], row["kind"]) for row in report["defects"]}
    assert seen == {(table, kind) for table, kinds in DEFECT_KINDS.items() for kind in kinds}
    assert report["injected"] > 0
    bad = [row for row in report["defects"] if row["unaccounted"]]
    assert not bad, bad


def test_quarantine_holds_only_defect_rows_or_their_consequences(tiny_run):
    manifest = pd.read_csv(tiny_run["raw"] / "defects.csv", keep_default_na=False)
    for table in contract.TABLES:
        quarantined = pd.read_parquet(tiny_run["validated"] / "quarantine" / f"{table}.parquet")
        injected = set(manifest.loc[manifest["table"] == table, "row"])
        innocent = quarantined[~quarantined["_row"].isin(injected)]
        # A clean row may only be quarantined because it refers to a quarantined item.
        assert innocent["_reasons"].str.contains("item_id").all(), innocent.head()


def test_no_raw_pii_after_clean(tiny_run):
    values = raw_pii_values(tiny_run["raw"])
    assert any("@" in value for value in values) and len(values) > 100
    assert find_pii([tiny_run["clean"]], values) == []


def test_clean_tables_are_typed_and_unique(tiny_run):
    catalog = pd.read_parquet(tiny_run["clean"] / "catalog.parquet")
    events = pd.read_parquet(tiny_run["clean"] / "events.parquet")
    queries = pd.read_parquet(tiny_run["clean"] / "queries.parquet")
    assert catalog["item_id"].is_unique and catalog["price"].dtype == float
    assert (catalog["price"].dropna() >= 0).all()
    assert str(events["timestamp"].dtype) .startswith("datetime64") and str(events["timestamp"].dt.tz) == "UTC"
    assert events["event_id"].is_unique and events["item_id"].isin(catalog["item_id"]).all()
    assert events["event_type"].isin(contract.EVENT_TYPES).all() and events["session_id"].notna().all()
    assert not queries.duplicated(["query_id", "item_id"]).any()
    assert queries["relevance"].between(0, 3).all() and queries["item_id"].isin(catalog["item_id"]).all()
