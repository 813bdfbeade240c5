"""One rule for a missing value in every column: empty, whitespace, "NaN", "null" and "N/A" are all missing.

A required column's missing value is quarantined with its not-null reason; an optional column's is allowed,
read as null and counted in validate's report. One data test per column of the contract, each form of
missing tried in that column alone on an otherwise good row.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from pipelines.core import contract
from pipelines.stages.validate import REASONS, validate
from tests.conftest import repo_settings, with_sections

FORMS = ("", "   ", "NaN", "null", "N/A")
GOOD = {
    "catalog": {"item_id": "P{n}", "title": "Mug {n}", "description": "a mug", "category": "Home", "brand": "Acme",
                "price": "2.5"},
    "events": {"event_id": "E{n}", "user_id": "U1", "item_id": "P0", "event_type": "view",
               "timestamp": "2026-06-01T10:00:00Z", "session_id": "S1"},
    "queries": {"query_id": "Q{n}", "user_id": "U1", "query": "mug", "item_id": "P0", "relevance": "2",
                "timestamp": "2026-06-01T10:00:00Z"},
}
CASES = [(table, column.name) for table in contract.TABLES for column in contract.CONTRACT[table]]


def raw_folder(root):
    """Per table: good rows 0-9, then one row per (column, form) with only that cell missing."""
    root.mkdir()
    where = {}
    for table, good in GOOD.items():
        rows = [{key: value.format(n=n) for key, value in good.items()} for n in range(10)]
        for column in contract.columns(table):
            for form in FORMS:
                row = {key: value.format(n=len(rows)) for key, value in good.items()}
                row[column] = form
                where.setdefault((table, column), []).append(len(rows))
                rows.append(row)
        with open(root / contract.file_name(table), "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=contract.columns(table))
            writer.writeheader()
            writer.writerows(rows)
    return root, where


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing")
    raw, where = raw_folder(root / "raw")
    settings = with_sections(repo_settings(), validate={"max_bad_fraction": 1.0})
    validate(raw, root / "out", settings)
    frames = {(kind, table): pd.read_parquet(root / "out" / kind / f"{table}.parquet")
              for kind in ("valid", "quarantine") for table in contract.TABLES}
    report = json.loads((root / "out" / "report.json").read_text(encoding="utf-8"))
    return frames, where, report


@pytest.mark.parametrize("table, column", CASES, ids=[f"{t}.{c}" for t, c in CASES])
def test_every_form_of_missing_is_treated_alike(validated, table, column):
    frames, where, report = validated
    rows = where[table, column]
    valid, quarantined = frames["valid", table], frames["quarantine", table]
    required = column in contract.required_columns(table)
    if required:
        reasons = quarantined.set_index(contract.ROW).loc[rows, REASONS]
        assert all(f"expect_column_values_to_not_be_null({column})" in reason for reason in reasons), reasons.tolist()
        assert not valid[contract.ROW].isin(rows).any()
    else:
        kept = valid.set_index(contract.ROW).loc[rows, column]
        assert kept.isna().all(), kept.tolist()
        assert report["missing_markers"][table][column] == len(FORMS) - 1  # every form but the empty cell
