"""Defect audit: every row the sample generator damaged is either quarantined or repaired.

Reads the generator's manifest (raw/defects.csv: table, row, kind, field, expected), the
validate output (valid/ and quarantine/ with their `_row` numbers) and the clean tables,
and decides for each damaged row what happened to it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines.core import contract
from pipelines.core.config import Settings
from pipelines.core.contract import ITEM_ID_MAP, ROW
from pipelines.data.text import normalize_text

MANIFEST = "defects.csv"


def _load(validated: Path, cleaned: Path, table: str) -> dict[str, pd.DataFrame]:
    return {
        "valid": pd.read_parquet(validated / "valid" / f"{table}.parquet").set_index(ROW, drop=False),
        "quarantine": pd.read_parquet(validated / "quarantine" / f"{table}.parquet").set_index(ROW, drop=False),
        "clean": pd.read_parquet(cleaned / f"{table}.parquet"),
    }


def _clean_row(frames: dict[str, pd.DataFrame], table: str, valid_row: pd.Series, id_map: dict[str, str]) -> pd.DataFrame:
    """The clean rows that the valid row became (by its primary key, after the item id remap)."""
    clean = frames["clean"]
    match = pd.Series(True, index=clean.index)
    for column in contract.PRIMARY_KEYS[table]:
        value = valid_row[column]
        if column == "item_id":
            value = id_map.get(value, value)
        match &= clean[column] == value
    return clean[match]


def _repaired(kind: str, defect: pd.Series, table: str, frames: dict, id_map: dict[str, str]) -> bool:
    valid_row = frames["valid"].loc[int(defect["row"])]
    if kind == "near_duplicate":
        return id_map.get(valid_row["item_id"]) == defect["expected"] and not (
            frames["clean"]["item_id"] == valid_row["item_id"]).any()
    clean_rows = _clean_row(frames, table, valid_row, id_map)
    if len(clean_rows) != 1:  # a duplicate left behind, or the row lost
        return False
    if kind == "exact_duplicate":
        return True
    value = clean_rows.iloc[0][defect["field"]]
    expected = defect["expected"]
    if defect["field"] == "timestamp":
        return value == pd.Timestamp(expected)
    if expected == "":  # a missing value in an optional column: allowed, and null after clean
        return bool(pd.isna(value))
    return value == normalize_text(expected)


def audit_defects(raw: Path, validated: Path, cleaned: Path, settings: Settings) -> dict:
    """Per table and defect kind: injected, quarantined, repaired, and what is left unaccounted."""
    from pipelines.data.sources.sample import DEFECT_KINDS

    raw, validated, cleaned = Path(raw), Path(validated), Path(cleaned)
    manifest_path = raw / MANIFEST
    if not manifest_path.exists():  # real sources inject nothing: there is nothing to account for
        return {"defects": [], "injected": 0, "unaccounted": 0}
    manifest = pd.read_csv(manifest_path, dtype={"row": int}, keep_default_na=False)
    id_map_frame = pd.read_parquet(cleaned / ITEM_ID_MAP)
    id_map = dict(zip(id_map_frame["item_id"], id_map_frame["kept_item_id"]))
    rows, unaccounted = [], 0
    for table, defects in manifest.groupby("table", sort=False):
        frames = _load(validated, cleaned, table)
        for kind, group in defects.groupby("kind", sort=False):
            expected_outcome = DEFECT_KINDS[table][kind]
            quarantined = int(group["row"].isin(frames["quarantine"].index).sum())
            in_valid = group[group["row"].isin(frames["valid"].index)]
            repaired = sum(_repaired(kind, defect, table, frames, id_map) for _, defect in in_valid.iterrows())
            accounted = quarantined if expected_outcome == "quarantine" else repaired
            rows.append({"table": table, "kind": kind, "outcome": expected_outcome, "injected": len(group),
                         "quarantined": quarantined, "repaired": int(repaired), "unaccounted": len(group) - accounted})
            unaccounted += len(group) - accounted
    return {"defects": rows, "injected": int(manifest.shape[0]), "unaccounted": int(unaccounted)}


def print_audit(report: dict) -> None:
    table = Table(title="Injected defects: what became of them")
    for column in ("table", "kind", "outcome", "injected", "quarantined", "repaired", "unaccounted"):
        table.add_column(column, justify="right" if column not in ("table", "kind", "outcome") else "left")
    for row in report["defects"]:
        table.add_row(*(str(row[column]) for column in row))
    Console(stderr=True).print(table)
