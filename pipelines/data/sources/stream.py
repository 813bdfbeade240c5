"""The stream sink: the behaviour stream's applied events, as Parquet partitions, added to a base source's events.

Layout (written by pipelines/feedback/sink.py, read here; the layout lives here so both sides share it):
``<sink>/date=YYYY-MM-DD/hour=HH/part-<name>.parquet``, one file per drain and UTC hour of the events' time,
the columns of the canonical ``events`` table in contract order, all strings (session_id may be null). User
ids are already the pipeline's pseudonyms: the stream's intake made them with the same key, and clean keeps
values of that shape as they are.

Ingest (``shopfusion ingest --source stream --path SINK``): the stage reads every partition (``read_sink``), writes
the base source's three tables (``ingest.stream_base``), then appends the sink's events to events.csv
(``append_events``):

- each event id once: a sink holds an id twice only when an event was applied again after its seen marker
  expired, or when two sinks were merged; the repeats are dropped and counted in the log;
- no event whose id the base's events.csv already holds (the base's events replayed through the stream, as
  `shopfusion stream publish --path data/raw/events.csv` does): the base's row is the same event, which clean
  pseudonymizes to the same user;
- sorted by time (then event id), after the base's rows, which stay byte for byte as the base wrote them
  (the sample's defect manifest names their row numbers).

The catalog: the sink also holds ``<sink>/catalog.parquet``, the catalog stream's products (POST /items) as the
stream processor last saw them (``SNAPSHOT_COLUMNS``: the ``catalog`` contract's columns, then stock and
removed; a field never sent is null). When it is there, ingest merges it into the base's catalog.csv by item_id
(``merge_catalog``): a product the base holds takes the snapshot's non-null title, description, category,
brand and price (every row of that item_id, so exact copies stay copies); one the base lacks is appended when
it has a title. Removed and out-of-stock products stay: their events are real behaviour, and the service hides
them from its answers by the catalog stream's own state. A value validate would refuse is not written (a
price below 0 or above validate.max_price, a missing-value marker such as "null"); a title is cut to the
suite's 500 characters. Rows the merge does not change keep the base's bytes (the sample's defect manifest
names catalog rows by number, and an undecodable title stays for clean to repair).

Items the catalog still lacks are kept: validate quarantines such events ("item_id not in the valid catalog"),
as it does for any source. A sink folder that does not exist is a DataError; one with no partitions yet adds
none.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import contract
from pipelines.core.atomic import atomic_write_bytes
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.rawio import MISSING_MARKERS

log = get_logger(__name__)

SOURCE = "stream"
EVENT_COLUMNS = tuple(contract.columns("events"))
SCHEMA = pa.schema([pa.field(name, pa.string(), nullable=True) for name in EVENT_COLUMNS])
PART_GLOB = "date=*/hour=*/part-*.parquet"
MARKER = "source.json"  # an adapter's note of the tables its source lacks (validate reads tables_absent)

# The catalog snapshot (written by pipelines/feedback/sink.py at its drains, merged here)
CATALOG_SNAPSHOT = "catalog.parquet"
CATALOG_COLUMNS = tuple(contract.columns("catalog"))
CATALOG_TEXT = ("title", "description", "category", "brand")
SNAPSHOT_COLUMNS = (*CATALOG_COLUMNS, "stock", "removed")
SNAPSHOT_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False),
                             *(pa.field(name, pa.string()) for name in CATALOG_TEXT),
                             pa.field("price", pa.float64()), pa.field("stock", pa.int64()),
                             pa.field("removed", pa.bool_(), nullable=False)])
SNAPSHOT_VERSION = b"shopfusion.catalog_version"  # the catalog stream's version the snapshot holds
TITLE_MAX = 500  # expectations/catalog.json: expect_column_value_lengths_to_be_between(title) max_value


# ---------------------------------------------------------------- layout

def partition_dir(sink: Path, moment: datetime) -> Path:
    """The folder of the events in `moment`'s UTC hour (moment is timezone-aware)."""
    return Path(sink) / f"date={moment:%Y-%m-%d}" / f"hour={moment:%H}"


def part_name(first_event_id: str) -> str:
    """A part's file name, from the first event id of its group: a drain that re-reads the same queue head
    (the one before it died unacknowledged) writes each group under the same name, replacing, not adding."""
    return f"part-{hashlib.sha256(first_event_id.encode('utf-8')).hexdigest()[:16]}.parquet"


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The events (contract columns, strings or None) as one Parquet file's bytes."""
    table = pa.Table.from_pandas(frame[list(EVENT_COLUMNS)], schema=SCHEMA, preserve_index=False)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def read_part(path: Path) -> pd.DataFrame:
    """One part as a frame of the contract columns (strings, None when missing); a DataError names the file."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet part of the stream sink ({type(error).__name__})") from None
    missing = [name for name in EVENT_COLUMNS if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (a stream sink part holds "
                        f"{', '.join(EVENT_COLUMNS)})")
    frame = table.select(list(EVENT_COLUMNS)).to_pandas()
    return frame.astype(object).where(frame.notna(), None)


# ---------------------------------------------------------------- reading the sink

def read_sink(sink: Path, since: datetime | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every partition's events (with `since`, those of its hour's partition and later: the monitor's recent
    window), each event id once, sorted by time then id; and counts for the log."""
    sink = Path(sink)
    if not sink.is_dir():
        raise DataError(f"{sink}: not found (source stream expects the stream sink's folder, stream.sink_path)")
    parts = sorted(sink.glob(PART_GLOB))
    if since is not None:
        first = since.astimezone(timezone.utc).strftime("date=%Y-%m-%d/hour=%H")
        parts = [path for path in parts if f"{path.parent.parent.name}/{path.parent.name}" >= first]
    frames = [read_part(path) for path in parts]
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EVENT_COLUMNS))
    moments = pd.to_datetime(events["timestamp"], utc=True, format="ISO8601", errors="coerce")
    order = events.assign(_moment=moments).sort_values(["_moment", "event_id"], kind="stable", na_position="last")
    unique = order.drop_duplicates("event_id", keep="first")[list(EVENT_COLUMNS)].reset_index(drop=True)
    counts = {"parts": len(parts), "rows": len(events), "duplicates_dropped": len(events) - len(unique)}
    if not parts:
        log.warning("the stream sink holds no partitions yet: no live events to add", extra={"sink": str(sink)})
    log.info("stream sink read", extra={"sink": str(sink), **counts})
    return unique, counts


def _base_event_ids(events_csv: Path) -> set[str]:
    try:
        ids = pd.read_csv(events_csv, dtype=str, usecols=["event_id"], keep_default_na=False,
                          encoding_errors="replace")["event_id"]
    except (ValueError, pd.errors.ParserError, OSError) as error:
        raise DataError(f"{events_csv}: the base source's events are not readable ({type(error).__name__})") from None
    return set(ids.str.strip())


# ---------------------------------------------------------------- appending

def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _append_csv(events: pd.DataFrame, events_csv: Path) -> None:
    """Append the rows in contract order; the base's own bytes are not rewritten."""
    complete = _ends_with_newline(events_csv)  # a base whose last line has no newline must not merge with ours
    with events_csv.open("a", encoding="utf-8", newline="") as handle:
        if not complete:
            handle.write("\n")
        writer = csv.writer(handle, lineterminator="\n")
        for row in events[list(EVENT_COLUMNS)].itertuples(index=False):
            writer.writerow(["" if value is None else value for value in row])


def _note_events_present(out_dir: Path) -> None:
    """A base that has no events of its own (Home Depot) names the table absent: with the sink's it is not."""
    marker = out_dir / MARKER
    if not marker.exists():
        return
    note = json.loads(marker.read_text(encoding="utf-8"))
    if "events" in note.get("tables_absent", []):
        note["tables_absent"] = [table for table in note["tables_absent"] if table != "events"]
        marker.write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")


def append_events(events: pd.DataFrame, out_dir: Path) -> dict[str, int]:
    """Append the sink's events (read_sink) to out_dir/events.csv, written by the base source, but those whose
    id the base already holds; how many were appended and how many the base held."""
    events_csv = Path(out_dir) / contract.file_name("events")
    if not events_csv.is_file():
        raise DataError(f"{events_csv}: no events table of the base source to add the stream's events to")
    in_base = events["event_id"].isin(_base_event_ids(events_csv))
    added = events[~in_base]
    _append_csv(added, events_csv)
    if len(added):
        _note_events_present(Path(out_dir))
    counts = {"appended": len(added), "already_in_base": int(in_base.sum())}
    log.info("stream sink events appended", extra={"events": str(events_csv), **counts})
    return counts


# ---------------------------------------------------------------- the catalog snapshot

def snapshot_bytes(rows: list[dict], version: int) -> bytes:
    """The catalog stream's products (dicts of SNAPSHOT_COLUMNS, None where a field was never sent) as one
    Parquet file's bytes, the stream's version in the file's metadata."""
    table = pa.Table.from_pylist([{name: row.get(name) for name in SNAPSHOT_COLUMNS} for row in rows],
                                 schema=SNAPSHOT_SCHEMA)
    table = table.replace_schema_metadata({SNAPSHOT_VERSION: str(int(version)).encode("ascii")})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def snapshot_version(path: Path) -> int | None:
    """The catalog stream's version a snapshot was written at; None when there is none (or it is unreadable:
    the next snapshot replaces it)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return int(metadata[SNAPSHOT_VERSION])
    except (pa.ArrowException, OSError, KeyError, ValueError):
        return None


def read_catalog_snapshot(sink: Path) -> pd.DataFrame | None:
    """<sink>/catalog.parquet as a frame of SNAPSHOT_COLUMNS (None where null), or None when the sink has none;
    a DataError names the file when it cannot be read."""
    path = Path(sink) / CATALOG_SNAPSHOT
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable catalog snapshot of the stream sink "
                        f"({type(error).__name__})") from None
    missing = [name for name in SNAPSHOT_COLUMNS if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (a catalog snapshot holds "
                        f"{', '.join(SNAPSHOT_COLUMNS)})")
    frame = table.select(list(SNAPSHOT_COLUMNS)).to_pandas().astype(object)
    frame = frame.where(frame.notna(), None)
    frame = frame[frame["item_id"].map(lambda value: isinstance(value, str) and bool(value.strip()))]
    return frame.drop_duplicates("item_id", keep="last").reset_index(drop=True)


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _usable_text(value) -> str | None:
    """A text value as the catalog can hold it: line breaks as LF (a lone CR would end the CSV row), other
    control characters as spaces (validate refuses a file with NUL bytes); "" when validate would read
    it as missing (blank, or a marker such as "null"); None when it is no text."""
    if not isinstance(value, str):
        return None
    if not value.strip() or value.strip().casefold() in MISSING_MARKERS:
        return ""
    return _CONTROL.sub(" ", value.replace("\r\n", "\n").replace("\r", "\n"))


def _usable_price(value, max_price: float) -> str | None:
    """A price validate accepts (a plain decimal from 0 to max_price), None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if not 0 <= value <= max_price:
        return None
    return np.format_float_positional(float(value), trim="-")  # never an exponent: the suite's price regex


def _snapshot_values(product: dict, max_price: float) -> tuple[dict[str, str], int]:
    """The fields a product of the snapshot sets (column -> the text to write), and how many it holds that
    validate would refuse (not set): a title that is missing, a price that is no price from 0 to max_price.
    An optional text sent empty is set empty (the product has none now)."""
    values, refused = {}, 0
    for name in CATALOG_TEXT:
        if product.get(name) is None:
            continue
        text = _usable_text(product[name])
        if text is None or (name == "title" and not text):
            refused += 1
            continue
        values[name] = text[:TITLE_MAX] if name == "title" else text
    if product.get("price") is not None:
        price = _usable_price(product["price"], max_price)
        if price is None:
            refused += 1
        else:
            values["price"] = price
    return values, refused


def _as_bytes_text(value: str) -> str:
    """A value in the merge's working text: the file's bytes read as Latin-1, one character per byte."""
    return value.encode("utf-8").decode("latin-1")


def _as_value(field: str) -> str:
    """A field of the working text as the value validate reads (UTF-8; bytes that are not kept as escapes)."""
    return field.encode("latin-1").decode("utf-8", "surrogateescape")


def _changed(name: str, current: str, new: str) -> bool:
    if name == "price":
        try:
            return float(current) != float(new)
        except ValueError:
            return True
    return current != new


class _Records:
    """A CSV reader over the working text that keeps each record's raw text (its lines, as read)."""

    def __init__(self, text: str):
        self._lines, self._taken = io.StringIO(text, newline=""), []
        self._reader = csv.reader(self, strict=False)

    def __next__(self) -> str:
        line = next(self._lines)
        self._taken.append(line)
        return line

    def __iter__(self):
        return self

    def records(self):
        """(fields, raw text) of each record, the header first."""
        for fields in self._reader:
            raw, self._taken = "".join(self._taken), []
            yield fields, raw


def merge_catalog(snapshot: pd.DataFrame, out_dir: Path, max_price: float) -> dict[str, int]:
    """Merge the catalog snapshot (read_catalog_snapshot) into out_dir/catalog.csv, written by the base source:
    the base's products take the snapshot's fields, the products it lacks are appended; counts for the log."""
    path = Path(out_dir) / contract.file_name("catalog")
    if not path.is_file():
        raise DataError(f"{path}: no catalog table of the base source to merge the stream's catalog into")
    data = path.read_bytes()
    csv.field_size_limit(max(csv.field_size_limit(), len(data)))  # a long description is one field, as in pandas
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    records = _Records(data[len(bom):].decode("latin-1")).records()
    try:
        header, header_raw = next(records)
    except StopIteration:
        raise DataError(f"{path}: the base source's catalog is empty") from None
    names = [field.strip() for field in header]
    missing = [name for name in CATALOG_COLUMNS if name not in names]
    if missing:
        raise DataError(f"{path}: the base source's catalog lacks column(s) {', '.join(missing)}")
    index = {name: names.index(name) for name in CATALOG_COLUMNS}
    newline = "\r\n" if header_raw.endswith("\r\n") else "\n"
    products = {item_id: product for item_id, product in
                zip(snapshot["item_id"].str.strip(), snapshot.to_dict("records"))}
    updates, refused = {}, 0
    for item_id, product in products.items():
        updates[item_id], count = _snapshot_values(product, max_price)
        refused += count

    out, in_base, updated = [header_raw], set(), set()
    for fields, raw in records:
        item_id = _as_value(fields[index["item_id"]]).strip() if len(fields) > index["item_id"] else None
        in_base.add(item_id)
        values = updates.get(item_id)
        fields = fields + [""] * (len(names) - len(fields))
        if values and any(_changed(name, _as_value(fields[index[name]]), value) for name, value in values.items()):
            for name, value in values.items():
                fields[index[name]] = _as_bytes_text(value)
            ending = "\r\n" if raw.endswith("\r\n") else "\n" if raw.endswith(("\n", "\r")) else ""
            raw = _row_text(fields, ending)
            updated.add(item_id)
        out.append(raw)

    added, skipped = [], 0
    for item_id, values in updates.items():
        if item_id in in_base:
            continue
        if "title" not in values or item_id.casefold() in MISSING_MARKERS:
            skipped += 1  # a product validate would refuse (no title, or an id read as missing): not added
            continue
        fields = [""] * len(names)
        fields[index["item_id"]] = _as_bytes_text(item_id)
        for name, value in values.items():
            fields[index[name]] = _as_bytes_text(value)
        added.append(_row_text(fields, newline))
    if added and out[-1] and not out[-1].endswith(("\n", "\r")):
        out[-1] += newline  # a base whose last row has no line end must not merge with ours
    atomic_write_bytes(path, bom + "".join(out + added).encode("latin-1"))
    counts = {"products": len(products), "added": len(added), "updated": len(updated), "skipped": skipped,
              "values_refused": refused}
    log.info("stream catalog merged", extra={"catalog": str(path), **counts})
    if skipped or refused:
        log.warning("stream catalog values validate would refuse were not written",
                    extra={"catalog": str(path), "skipped_products": skipped, "values_refused": refused})
    return counts


def _row_text(fields: list[str], ending: str) -> str:
    """One CSV row of the working text (quoted as pandas quotes), ended by `ending` ("": the file's last row)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=ending or "\n").writerow(fields)
    return buffer.getvalue() if ending else buffer.getvalue()[:-1]
