"""The durable serving log: what was served, and the feedback it got.

<dir>/served.jsonl  one row per served list: request_id, task, timestamp, user (pseudonym), items (ids in
                    served order), propensities (per slot; 1.0 where the order was deterministic),
                    slate_features (the bandit's features of the explored slots), policy, model_version
<dir>/events.jsonl  one row per /feedback call: request_id, user, item_id, event_type, timestamp, slot
Each row is one os.write on an O_APPEND descriptor, so concurrent workers never interleave lines; feedback
events are fsynced before /feedback answers (nothing acknowledged is lost across a crash or restart);
served rows are written through to the OS at once (they survive a process crash).
`served_lists` joins both into the rows monitoring reads: items and clicked.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import orjson
import pandas as pd

from pipelines.core.errors import DataError

SERVED = "served.jsonl"
EVENTS = "events.jsonl"


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
            os.write(self._fd, line)
            if self.durable:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class FeedbackLog:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.served = AppendLog(self.folder / SERVED, durable=False)
        self.events = AppendLog(self.folder / EVENTS, durable=True)

    def log_served(self, row: dict) -> None:
        self.served.append({"timestamp": time.time(), **row})

    def log_event(self, row: dict) -> None:
        self.events.append({"timestamp": time.time(), **row})

    def close(self) -> None:
        self.served.close()
        self.events.close()


def read_rows(path: Path, start: int = 0) -> tuple[list[dict], int]:
    """Complete rows from byte offset `start`, and the offset after the last complete one (a line
    still being written is left for the next read)."""
    path = Path(path)
    if not path.exists():
        return [], start
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    rows = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                rows.append(_row(line))
            except ValueError:
                raise DataError(f"{path}: line {number} after byte {start} is not JSON") from None
    return rows, start + end


def _row(line: bytes) -> dict:
    """orjson reads every row written since it writes them (every worker reads every row: 3x faster than json);
    json the NaN literals that rows written before it may hold."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


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
