"""ID-only interaction sequences (S3-Rec format, e.g. ``../shared/datasets/amazon-sequences/Beauty.txt``).

Input: a ``<Name>.txt`` file, or a folder holding exactly one ``.txt`` file, with one user per
line: ``user_id item_1 item_2 ...`` (integer ids separated by white space, items in time order).
Blank lines are skipped; a user line with no items is skipped and counted in the log; a user that
appears on two lines, or a token that is not an integer id, is a DataError.

Output in ``out_dir``:

- ``events.csv``: one row per (user, position); ``event_id`` ``<user>-<pos>`` (pos 1-based),
  ``event_type`` ``purchase``, ``session_id`` empty. The source has **no times**: ``timestamp`` is
  ordinal, 2000-01-01T00:00:00Z plus ``pos`` minutes, so each user's order is kept, but times
  are not comparable across users (all users share the same clock). Split by position
  (leave-one-out: last item = test, second last = valid), never by date.
- ``catalog.csv``: ID only, **this catalog has no text**: one row per distinct item, sorted by id;
  title is ``"<Name> item <id>"`` (underscores of the file name read as spaces, e.g.
  ``"Beauty item 123"``) so the required title is filled without pretending to be product text;
  description, category, brand and price are empty.
- ``queries.csv``: **header only** -- the source has no searches.
- ``source.json``: ``{"source": "sequences", "path": ..., "tables_absent": ["queries"],
  "text": false}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import contract
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.rawio import write_table
from pipelines.data.sources.reading import find_one

log = get_logger(__name__)

SOURCE = "sequences"
EVENT_TYPE = "purchase"
BASE_TIME = pd.Timestamp("2000-01-01T00:00:00", tz="UTC")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_LINE = r"\d+(?:\s+\d+)*"


def _locate(source_path: Path) -> Path:
    source_path = Path(source_path)
    if not source_path.exists():
        raise DataError(f"{source_path}: not found (sequences expects a <Name>.txt file or a folder with one)")
    if source_path.is_dir():
        return find_one(source_path, "*.txt", "the sequences source")
    return source_path


def _read_lines(path: Path) -> pd.Series:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file of ids (undecodable byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if "\x00" in text:
        raise DataError(f"{path}: binary content (NUL byte), not a text file of ids")
    lines = pd.Series(text.splitlines(), dtype=object).str.strip()
    lines.index = pd.RangeIndex(1, len(lines) + 1)  # line numbers
    lines = lines[lines != ""]
    if lines.empty:
        raise DataError(f"{path}: file is empty")
    bad = ~lines.str.fullmatch(_LINE)
    if bad.any():
        number = int(lines.index[bad.to_numpy()][0])
        shown = lines[number] if len(lines[number]) <= 40 else lines[number][:37] + "..."
        raise DataError(
            f"{path}: line {number}: {shown!r} is not 'user_id item_id item_id ...' of integer ids "
            f"({int(bad.sum())} such lines)"
        )
    return lines


def convert(source_path: Path, out_dir: Path) -> dict[str, int]:
    """Write events.csv, the ID-only catalog.csv, header-only queries.csv and source.json."""
    path = _locate(Path(source_path))
    out_dir = Path(out_dir)
    name = path.stem.replace("_", " ").strip() or path.stem
    lines = _read_lines(path)

    tokens = lines.str.split()
    users = tokens.str[0]
    repeated = users.duplicated()
    if repeated.any():
        number = int(users.index[repeated.to_numpy()][0])
        first = int(users.index[(users == users[number]).to_numpy()][0])
        raise DataError(f"{path}: line {number}: user {users[number]} already has a sequence on line {first}")
    items = tokens.str[1:]
    lengths = items.str.len()
    empty = int((lengths == 0).sum())
    if empty:
        log.warning("users without items skipped", extra={"file": str(path), "users": empty})

    if not (lengths > 0).any():
        raise DataError(f"{path}: no user line holds any item")
    exploded = items[lengths > 0].explode()
    item_ids = exploded.reset_index(drop=True).astype(object)
    user_ids = pd.Series(np.repeat(users[lengths > 0].to_numpy(), lengths[lengths > 0].to_numpy()), dtype=object)
    positions = pd.Series(exploded.groupby(level=0, sort=False).cumcount().to_numpy() + 1, dtype=np.int64)
    steps = np.arange(int(positions.max()) + 1)  # format each distinct position once
    labels = (BASE_TIME + pd.to_timedelta(steps, unit="min")).strftime(TIME_FORMAT).to_numpy(dtype=object)
    stamps = pd.Series(labels[positions.to_numpy()], dtype=object)
    events = pd.DataFrame({
        "event_id": user_ids + "-" + positions.astype(str),
        "user_id": user_ids,
        "item_id": item_ids,
        "event_type": EVENT_TYPE,
        "timestamp": stamps,
        "session_id": "",
    })

    distinct = pd.Series(item_ids.unique(), dtype=object)
    order = np.argsort(distinct.astype(np.int64).to_numpy(), kind="stable")
    distinct_ids = distinct.iloc[order].reset_index(drop=True)
    catalog = pd.DataFrame({
        "item_id": distinct_ids,
        "title": f"{name} item " + distinct_ids,
        "description": "", "category": "", "brand": "", "price": "",
    })

    queries = pd.DataFrame(columns=contract.columns("queries"))
    write_table(catalog, out_dir, "catalog")
    write_table(events, out_dir, "events")
    write_table(queries, out_dir, "queries")
    marker = {"source": SOURCE, "path": str(source_path), "tables_absent": ["queries"], "text": False}
    (out_dir / "source.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    counts = {"catalog": len(catalog), "events": len(events), "queries": 0}
    log.info(
        "sequences converted",
        extra={"file": str(path), "dataset": name, "rows": counts, "users": int((lengths > 0).sum())},
    )
    return counts
