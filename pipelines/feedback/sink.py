"""The Parquet sink of the behaviour stream (issue #18, point 5): the applied events, for the next training run.

LiveState's apply script (pipelines/feedback/live_state.py) appends each newly applied event to the list
`<state prefix>sinkq` (JSON of the `events` contract's fields) in the same atomic step that marks it applied:
a duplicate or re-delivered event is never queued, and no transaction has to span Redis and the files.
A drain (`Sink.drain`), by one processor at a time (a Redis lock: SET NX with a TTL):

  1. reads up to `flush_events` records from the head of the queue (LRANGE: nothing is removed yet);
  2. groups them by the UTC hour of their event time and writes each group as one Parquet file,
     <sink>/date=YYYY-MM-DD/hour=HH/part-<name>.parquet (the layout of pipelines/data/sources/stream.py),
     atomically (a temp file in the folder, fsync, rename); <name> is a hash of the group's first event id;
  3. removes the records from the queue (LTRIM) and releases the lock, in one script that does either only
     while the lock is still its own.

A processor killed between 2 and 3 leaves the records at the head of the queue: the next drain reads the same
head, so each hour's group starts with the same event, gets the same name and the same records or more, and
replaces the file: no event is written twice. A drain that stalled past its lock's TTL while another drained
the same head trims nothing, and a file is merged with the one it replaces (each event id once, under a lock
on the sink folder), so the stalled drain's smaller file cannot take away what the other wrote.

The catalog (POST /items, the catalog stream of pipelines/serving/catalog.py): a sink made with the stream's
prefix (`Sink.from_params`) also keeps <sink>/catalog.parquet, the products of the hash `<prefix>catalog`, one
row each (the `catalog` contract's columns, then stock and removed; the layout of
pipelines/data/sources/stream.py). At each drain, while it holds the drain's lock and before it writes the
events, it compares `<prefix>catalog:version` with the version the snapshot was written at (kept in the file's
metadata) and, when it changed, reads the hash and version in one transaction and replaces the file
atomically. So a sink's events have their products in the snapshot of the same drain or an earlier one,
and processors that drain in turn rewrite the snapshot only when the catalog changed.

`shopfusion ingest --source stream --path SINK` turns the partitions into the canonical events table and merges
the snapshot into the base's catalog.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipelines.core import contract
from pipelines.core.atomic import atomic_write_bytes, file_lock
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.data.sources.stream import (
    CATALOG_SNAPSHOT,
    CATALOG_TEXT,
    EVENT_COLUMNS,
    parquet_bytes,
    part_name,
    partition_dir,
    read_part,
    snapshot_bytes,
    snapshot_version,
)
from pipelines.feedback.catalog_state import CatalogKeys, decode_state, read_catalog, read_version

log = get_logger(__name__)

REQUIRED = frozenset(contract.required_columns("events"))

# A drain of `flush_events` records takes well under a second; the lock outlives a stalled one (its files are
# merged, its trim refused) and frees the sink for the others this long after a processor died holding it.
LOCK_TTL_SECONDS = 60
FOLDER_LOCK = ".drain"  # <sink>/.drain.lock: drains on one host write one at a time (file_lock)

# KEYS: 1 lock, 2 queue; ARGV: 1 our lock token, 2 records to remove from the head (0: none)
TRIM_AND_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[2], ARGV[2], -1) end
redis.call('DEL', KEYS[1])
return 1
"""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _hour_of(record: dict) -> datetime:
    """The UTC hour of the event's time (the intake wrote it as ISO-8601 in UTC)."""
    moment = datetime.fromisoformat(record["timestamp"])
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _parsed(raw) -> dict | None:
    """A queued record as the event's fields; None when it is not one (only a foreign writer puts such): each
    field a string (the optional ones may be null) and a time the hour can be read from."""
    try:
        record = json.loads(_text(raw))
        if not isinstance(record, dict):
            return None
        fields = {name: record.get(name) for name in EVENT_COLUMNS}
        if any(not isinstance(value, str) for name, value in fields.items() if name in REQUIRED or value is not None):
            return None
        _hour_of(fields)
    except (ValueError, TypeError):  # JSONDecodeError and a bad timestamp are ValueErrors
        return None
    return fields


def group_by_hour(records: list[dict]) -> dict[datetime, list[dict]]:
    """The records of each UTC hour, in queue order."""
    groups: dict[datetime, list[dict]] = defaultdict(list)
    for record in records:
        groups[_hour_of(record)].append(record)
    return dict(groups)


def _merged(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the rows of the file it replaces that it lacks (a stalled drain writing a group later than
    a drain that wrote the same group with more rows): each event id once, the file's rows first."""
    if not path.exists():
        return frame
    existing = read_part(path)
    return pd.concat([existing, frame], ignore_index=True).drop_duplicates("event_id", keep="first")


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _string(value) -> str | None:
    """Text as Parquet can hold it (a lone surrogate, which JSON can spell, as "?"); None when it is no text."""
    return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else None


def snapshot_row(item_id: str, state: dict) -> dict:
    """A product's stored state as a row of the catalog snapshot: a field never sent (or of the wrong type) is
    None, removed is False unless set."""
    price, stock = _number(state.get("price")), _number(state.get("stock"))
    return {"item_id": item_id, **{name: _string(state.get(name)) for name in CATALOG_TEXT},
            "price": None if price is None else float(price), "stock": None if stock is None else int(stock),
            "removed": bool(state.get("removed") or False)}


class Sink:
    """Drains the sink queue `queue_key` into hourly Parquet partitions under `path`; with `catalog` (the catalog
    stream's keys) it keeps the catalog snapshot <path>/catalog.parquet too."""

    def __init__(self, path: Path, queue_key: str, flush_events: int, flush_seconds: float,
                 catalog: CatalogKeys | None = None):
        self.path, self.queue_key = Path(path), queue_key
        self.lock_key = f"{queue_key}:lock"
        self.flush_events, self.flush_seconds = flush_events, flush_seconds
        self.catalog = catalog
        self.counts = {"drains": 0, "events": 0, "files": 0, "bad_records": 0, "write_errors": 0,
                       "catalog_snapshots": 0, "catalog_errors": 0}
        self._drained_at = time.monotonic()
        self._trim_and_release = None  # the script, registered on the first drain's client
        self._catalog_version: int | None = None  # the version of the snapshot on disk, as last seen

    @classmethod
    def from_params(cls, path: Path, queue_key: str, params) -> "Sink":
        """From params.yaml's `stream:` (StreamParams); `path` is sink_path or the command's --sink. The catalog
        stream followed is the one under the same prefix (stream.prefix)."""
        return cls(path, queue_key, params.sink_flush_events, params.sink_flush_seconds,
                   catalog=CatalogKeys(params.prefix))

    # ------------------------------------------------------------ when

    def due(self, client) -> bool:
        """flush_seconds since the last drain, or a queue of flush_events records (any processor's)."""
        if time.monotonic() - self._drained_at >= self.flush_seconds:
            return True
        return client.llen(self.queue_key) >= self.flush_events

    # ------------------------------------------------------------ the steps

    def read_head(self, client) -> list:
        """Up to flush_events records from the head of the queue, as stored (nothing removed)."""
        return client.lrange(self.queue_key, 0, self.flush_events - 1)

    def write(self, raw_records: list) -> list[Path]:
        """Write the records as one Parquet file per UTC hour (atomically); the files written."""
        records = [record for record in map(_parsed, raw_records) if record is not None]
        if len(records) < len(raw_records):
            self.counts["bad_records"] += len(raw_records) - len(records)
            log.warning("sink queue records that are not events skipped",
                        extra={"queue": self.queue_key, "records": len(raw_records) - len(records)})
        written = []
        with file_lock(self.path / FOLDER_LOCK):
            for hour, group in sorted(group_by_hour(records).items()):
                path = partition_dir(self.path, hour) / part_name(group[0]["event_id"])
                frame = _merged(path, pd.DataFrame(group, columns=list(EVENT_COLUMNS)))
                atomic_write_bytes(path, parquet_bytes(frame))
                written.append(path)
        self.counts["events"] += len(records)
        self.counts["files"] += len(written)
        return written

    def snapshot_catalog(self, client) -> bool:
        """Rewrite <path>/catalog.parquet when the catalog stream's version differs from the snapshot's; True
        when written. Nothing while no product was ever published (version 0). A file that cannot be written is
        logged and counted (the next drain tries again); a state that is no JSON object is skipped and logged."""
        if self.catalog is None:
            return False
        version = read_version(client, self.catalog)
        if version == 0 or version == self._catalog_version:
            return False
        path = self.path / CATALOG_SNAPSHOT
        try:
            with file_lock(self.path / FOLDER_LOCK):
                if snapshot_version(path) == version:  # another processor wrote this version
                    self._catalog_version = version
                    return False
                version, stored = read_catalog(client, self.catalog)
                rows, bad = [], 0
                for key, raw in stored.items():
                    try:
                        item_id, state = _text(key), decode_state(raw)
                    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                        bad += 1
                        continue
                    rows.append((_number(state.get("sequence")) or 0, item_id, snapshot_row(item_id, state)))
                rows.sort(key=lambda entry: entry[:2])  # the base's products, then the new ones as they came
                atomic_write_bytes(path, snapshot_bytes([row for _, _, row in rows], version))
        except (OSError, ValueError) as error:  # ValueError: pyarrow's ArrowInvalid (a value it cannot hold)
            self.counts["catalog_errors"] += 1
            log.error("stream sink catalog snapshot not written",
                      extra={"sink": str(self.path), "error": type(error).__name__})
            return False
        if bad:
            log.warning("catalog stream states that are not JSON objects left out of the snapshot",
                        extra={"hash": self.catalog.hash, "states": bad})
        self._catalog_version = version
        self.counts["catalog_snapshots"] += 1
        log.info("stream sink catalog snapshot written",
                 extra={"sink": str(path), "version": version, "products": len(rows)})
        return True

    def _lock(self, client) -> str | None:
        token = secrets.token_hex(8)
        return token if client.set(self.lock_key, token, nx=True, ex=LOCK_TTL_SECONDS) else None

    def _finish(self, client, token: str, count: int) -> bool:
        """Remove `count` records from the head and release the lock, only if the lock is still `token`'s."""
        if self._trim_and_release is None:
            self._trim_and_release = client.register_script(TRIM_AND_RELEASE)
        return bool(self._trim_and_release(keys=[self.lock_key, self.queue_key], args=[token, count]))

    # ------------------------------------------------------------ a drain

    def drain(self, client) -> int:
        """One drain (the lock, read, write, trim, release); the records removed from the queue. 0 when another
        processor holds the lock, the queue is empty, or the files could not be written (the records stay
        queued and the error is logged: a full disk must not stop the live state)."""
        self._drained_at = time.monotonic()
        token = self._lock(client)
        if token is None:
            return 0
        count, files = 0, []
        try:
            self.snapshot_catalog(client)  # first: the products of the events written next are in it
            count, files = self._write_head(client)
        finally:
            trimmed = self._finish(client, token, count)
        if count and not trimmed:
            log.warning("sink lock expired during a drain: queue left for the next one (its files were merged)",
                        extra={"queue": self.queue_key, "records": count})
            return 0
        if count:
            self.counts["drains"] += 1
            log.debug("stream sink drained", extra={"sink": str(self.path), "records": count, "files": len(files)})
        return count

    def _write_head(self, client) -> tuple[int, list[Path]]:
        """Read the head and write it: (records read, files written); (0, []) when the files could not be."""
        try:
            raw_records = self.read_head(client)
            return len(raw_records), self.write(raw_records) if raw_records else []
        except (OSError, DataError) as error:  # DataError: a part to merge with is unreadable
            self.counts["write_errors"] += 1
            log.error("stream sink not written; the events stay queued",
                      extra={"sink": str(self.path), "error": type(error).__name__})
            return 0, []

    def drain_all(self, client) -> int:
        """Drain until the queue is empty or another processor holds the lock (a processor stopping)."""
        total = 0
        while (count := self.drain(client)) == self.flush_events:
            total += count
        total += count
        log.info("stream sink drained at stop", extra={"sink": str(self.path), "records": total, **self.counts})
        return total
