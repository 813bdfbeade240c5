"""Reading and writing the canonical raw CSV files.

Raw files are read as text, every cell a string, so that nothing is coerced or lost before
validation. Bytes that are not UTF-8 are decoded as Windows-1252 (the usual cause of such bytes in
shop exports) cell by cell, and each repaired (row, field) is reported.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.core import contract
from pipelines.core.errors import DataError

SNIFF_BYTES = 65536


@dataclass
class RawTable:
    table: str
    path: Path
    frame: pd.DataFrame  # contract columns as strings, None for empty; index = data row number
    reencoded: list[tuple[int, str]] = field(default_factory=list)  # (row, column) not valid UTF-8
    missing_markers: dict[str, int] = field(default_factory=dict)  # column -> cells read as missing (MISSING_MARKERS)


# One rule for a missing value, whatever the column: empty, only whitespace, or one of these (any case) is
# missing. A required column's missing value is quarantined by its not-null expectation; an optional one is
# allowed (null), and validate's report counts the non-empty markers per column (`missing_markers`).
MISSING_MARKERS = frozenset({"nan", "null", "none", "na", "n/a"})


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and (not value.strip() or value.strip().casefold() in MISSING_MARKERS))


def write_table(frame: pd.DataFrame, out_dir: Path, table: str) -> Path:
    """Write one canonical table as UTF-8 CSV with exactly the contract's columns, in order."""
    missing = [name for name in contract.columns(table) if name not in frame.columns]
    if missing:
        raise ValueError(f"{table}: adapter produced no column(s) {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / contract.file_name(table)
    frame[contract.columns(table)].to_csv(path, index=False, encoding="utf-8")
    return path


_UNDECODED = re.compile("[\udc80-\udcff]")


def _redecode(cell: str) -> str:
    """A cell read with surrogateescape: its stray bytes decoded as Windows-1252 (Latin-1 where undefined)."""
    data = cell.encode("utf-8", "surrogateescape")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _repair_encoding(frame: pd.DataFrame) -> list[tuple[int, str]]:
    repaired = []
    for name in frame.columns:
        values = frame[name]
        bad = values.map(lambda cell: cell is not None and bool(_UNDECODED.search(cell)))
        for row in values.index[bad]:
            frame.at[row, name] = _redecode(values[row])
            repaired.append((int(row), name))
    return sorted(repaired)


def _check_bytes(path: Path, data: bytes) -> None:
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    head = data[:SNIFF_BYTES]
    if b"\x00" in head:
        offset = head.index(b"\x00")
        raise DataError(f"{path}: binary content (NUL byte at offset {offset}), not a CSV text file")
    control = sum(1 for byte in head if byte < 32 and byte not in (9, 10, 13))
    if control > len(head) * 0.01:
        raise DataError(f"{path}: binary content ({control} control bytes), not a CSV text file")


def read_table(raw_dir: Path, table: str) -> RawTable:
    """Read one raw table; a DataError names the file and the problem when it cannot be used."""
    path = Path(raw_dir) / contract.file_name(table)
    if not path.exists():
        raise DataError(f"{path}: file not found (the {table} table is required)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None
    _check_bytes(path, data)
    try:
        frame = pd.read_csv(
            io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False,
            encoding="utf-8", encoding_errors="surrogateescape", on_bad_lines="error",
        )
    except (pd.errors.ParserError, csv.Error, UnicodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    missing = [name for name in contract.columns(table) if name not in frame.columns]
    if missing:
        found = ", ".join(frame.columns[:8])
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)} (found: {found})")
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    frame = frame[contract.columns(table)]
    markers = {}
    for column in frame.columns:
        missing = frame[column].map(_missing)
        if (counted := int((missing & (frame[column] != "")).sum())):
            markers[column] = counted
        frame[column] = frame[column].where(~missing, None)
    frame.index = pd.RangeIndex(len(frame), name="_row")
    reencoded = _repair_encoding(frame)
    return RawTable(table, path, frame, reencoded, markers)
