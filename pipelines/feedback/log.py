"""The durable serving log: what was served, and the feedback it got.

<dir>/served.jsonl  one row per served list: request_id, task, timestamp, user (pseudonym), items (ids in
                    served order), propensities (per slot; 1.0 where the order was deterministic),
                    slate_features (the bandit's features of the explored slots), policy, model_version
<dir>/events.jsonl  one row per /feedback call: request_id, user, item_id, event_type, timestamp, slot
Each row is one os.write on an O_APPEND descriptor (looped until every byte is written), so concurrent
workers never interleave lines; feedback events are fsynced before /feedback answers (nothing acknowledged
is lost across a crash or restart); served rows are written through to the OS at once (they survive a
process crash) and made durable (`make_durable`) before a reader saves an offset into them, so a saved
offset never points past what survives a power loss.
Readers never stall on a damaged file: a torn or garbage line is skipped, logged with its byte offset and
reported to the reader's hook (the service counts them in a metric); an offset past the end of a file that
was truncated resumes at its end, and one that lands inside a line resumes at the next line.
`served_lists` joins both into the rows monitoring reads: items and clicked.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd

from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger

log = get_logger(__name__)

SERVED = "served.jsonl"
EVENTS = "events.jsonl"
SkippedHook = Callable[[Path, int, str], None]  # (file, byte offset of the line, why)


class AppendLog:
    def __init__(self, path: Path, durable: bool):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    def append(self, row: dict) -> None:
        line = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            written = 0
            try:
                while written < len(line):  # os.write may write less than asked (a signal, a nearly full disk)
                    written += os.write(self._fd, line[written:])
            except OSError:
                if written:
                    self._take_back(written)
                raise
            if self.durable:
                os.fsync(self._fd)

    def _take_back(self, written: int) -> None:
        """A line cut short by a failed write (a full disk) is cut off the file again, so no torn line is left:
        with O_APPEND our offset is the end of our bytes; if no other writer appended since, the file ends
        there. (If one did, the torn line stays and readers skip it, logged.)"""
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        if os.fstat(self._fd).st_size == end:
            os.ftruncate(self._fd, end - written)
        else:
            log.warning("a torn line is left in the log: another writer appended after it",
                        extra={"file": str(self.path), "byte_offset": end - written})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class FeedbackLog:
    def __init__(self, folder: Path):
        """A folder that cannot be written is a DataError naming it (the service refuses to start with one line)."""
        self.folder = Path(folder)
        try:
            self.served = AppendLog(self.folder / SERVED, durable=False)
            self.events = AppendLog(self.folder / EVENTS, durable=True)
        except OSError as exc:
            raise DataError(f"{self.folder}: feedback folder not writable ({exc.strerror or exc})") from None

    def log_served(self, row: dict) -> None:
        self.served.append({"timestamp": time.time(), **row})

    def log_event(self, row: dict) -> None:
        self.events.append({"timestamp": time.time(), **row})

    def close(self) -> None:
        self.served.close()
        self.events.close()


def read_rows(path: Path, start: int = 0, on_skipped: SkippedHook | None = None) -> tuple[list[dict], int]:
    """Complete rows from byte offset `start`, and the offset after the last complete line (a line still
    being written is left for the next read). Lines that are not JSON objects are skipped (see the module)."""
    path = Path(path)
    if not path.exists():
        return [], start
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if start > size:
            _skipped(path, start, f"offset past the end ({size} bytes): the file was truncated; reading on "
                                  "from its end", on_skipped)
            return [], size
        if start > 0:
            handle.seek(start - 1)
            data = handle.read()  # from the byte before `start`: a newline there means `start` begins a line
            skip = 1
            if not data.startswith(b"\n"):  # the offset lands inside a line: that line is damaged for us
                newline = data.find(b"\n")
                if newline < 0:
                    return [], start
                _skipped(path, start, "offset inside a line: reading on from the next line", on_skipped)
                skip = newline + 1
            start, data = start - 1 + skip, data[skip:]
        else:
            data = handle.read()
    end = data.rfind(b"\n") + 1
    rows, offset = [], start
    for line in data[:end].split(b"\n")[:-1]:
        if line.strip():
            row, torn = _row(line), 0
            while row is None and (torn := line.find(b'{"', torn + 1)) > 0:
                row = _row(line[torn:])  # a torn row with a whole row written after it on the same line
            if torn:
                _skipped(path, offset, "not a JSON object (a torn or damaged line)"
                         + (f"; the whole row after its first {torn} bytes kept" if row is not None else ""),
                         on_skipped)
            if row is not None:
                rows.append(row)
        offset += len(line) + 1
    return rows, start + end


def _skipped(path: Path, offset: int, reason: str, on_skipped: SkippedHook | None) -> None:
    log.warning("feedback log line skipped", extra={"file": str(path), "byte_offset": offset, "reason": reason})
    if on_skipped is not None:
        on_skipped(path, offset, reason)


def make_durable(path: Path) -> None:
    """fsync a log file, so an offset read from it survives a power loss (no-op when it does not exist)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _row(line: bytes) -> dict | None:
    """orjson reads every row written since it writes them (every worker reads every row: 3x faster than json);
    json the NaN literals that rows written before it may hold. None: not a JSON object."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            row = json.loads(line)
        except ValueError:
            return None
    return row if isinstance(row, dict) else None


def served_lists(folder: Path) -> pd.DataFrame:
    """One row per served list with the clicked item ids: what monitoring reads."""
    served, _ = read_rows(Path(folder) / SERVED)
    events, _ = read_rows(Path(folder) / EVENTS)
    clicked: dict[str, list[str]] = {}
    for event in events:
        clicked.setdefault(event["request_id"], []).append(event["item_id"])
    return pd.DataFrame([{"request_id": row["request_id"], "task": row.get("task"), "timestamp": row["timestamp"],
                          "items": row["items"], "clicked": list(dict.fromkeys(clicked.get(row["request_id"], [])))}
                         for row in served], columns=["request_id", "task", "timestamp", "items", "clicked"])
