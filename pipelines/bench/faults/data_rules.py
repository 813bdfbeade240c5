"""9. Data rules: one rule for a missing value in every column. Empty, whitespace, "NaN", "null" and "N/A" are all
missing. A required column's missing value is quarantined with its not-null reason; an optional column's is
allowed, read as null and counted in validate's report (`missing_markers`, the documented flag). Each form is
tried in each column of the contract alone, on an otherwise good row, through the validate stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from pipelines.bench.faults import Fault, FaultContext
from pipelines.core import contract
from pipelines.core.config import load_settings
from pipelines.stages.validate import REASONS, validate

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


def raw_folder(root: Path) -> tuple[Path, dict]:
    """Per table: good rows 0-9, then one row per (column, form) with only that cell missing; where each
    column's rows are."""
    root.mkdir(parents=True)
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


def validated(root: Path, settings) -> tuple[dict, dict, dict]:
    """The raw folder through validate: its valid and quarantined tables, where the rows are, its report."""
    raw, where = raw_folder(root / "raw")
    validate(raw, root / "out", settings.model_copy(update={"validate_": settings.validate_.model_copy(
        update={"max_bad_fraction": 1.0})}))
    frames = {(kind, table): pd.read_parquet(root / "out" / kind / f"{table}.parquet")
              for kind in ("valid", "quarantine") for table in contract.TABLES}
    report = json.loads((root / "out" / "report.json").read_text(encoding="utf-8"))
    return frames, where, report


def treated_alike(frames: dict, where: dict, report: dict, table: str, column: str) -> bool:
    """Every form of missing in this column met the column's one rule."""
    rows = where[table, column]
    valid, quarantined = frames["valid", table], frames["quarantine", table]
    if column in contract.required_columns(table):
        if not quarantined[contract.ROW].isin(rows).sum() == len(rows):
            return False
        reasons = quarantined.set_index(contract.ROW).loc[rows, REASONS]
        return all(f"expect_column_values_to_not_be_null({column})" in reason for reason in reasons) \
            and not valid[contract.ROW].isin(rows).any()
    kept = valid.set_index(contract.ROW).reindex(rows)[column]
    return bool(kept.isna().all()) and pd.Series(rows).isin(valid[contract.ROW]).all() \
        and report["missing_markers"][table][column] == len(FORMS) - 1  # every form but the empty cell


def run(context: FaultContext) -> Fault:
    from pipelines.bench.workspace import ROOT

    settings = load_settings(context.pipeline_params or ROOT / "params.yaml")
    frames, where, report = validated(context.folder("data_rules"), settings)
    fault = Fault()
    for table, column in CASES:
        fault.requests += len(FORMS)
        if not fault.check(f"{table}.{column}", treated_alike(frames, where, report, table, column)):
            fault.errors += len(FORMS)
    required = sum(column in contract.required_columns(table) for table, column in CASES)
    fault.figures.update(columns=len(CASES), required_columns_quarantined=required,
                         optional_columns_flagged=len(CASES) - required, forms=list(FORMS))
    return fault
