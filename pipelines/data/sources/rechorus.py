"""A ReChorus-format recommendation folder (e.g. ``../shared/datasets/amazon-office``) as raw tables.

Input folder layout (all files tab-separated, UTF-8):

- ``train.csv``: ``user_id item_id time`` (unix seconds);
- ``dev.csv``, ``test.csv``: ``user_id item_id time neg_items``, one held-out next item per user and
  its sampled negatives as a ``[1, 2, ...]`` list;
- ``<Name>.item2index``: ``ASIN<TAB>item_id``, no header (every catalog item);
- ``<Name>.text``: ``id<TAB>text`` with that header, id being the ASIN (for Amazon sets the text is
  title, category and brand run together);
- optional ``item_meta.csv``: ``item_id i_category i_brand r_complement r_substitute`` (the last
  two are item lists like ``neg_items``).

``<Name>`` is found by globbing ``*.item2index`` and ``*.text``; there must be exactly one of each.

Output in ``out_dir``:

- ``events.csv``: every interaction of train, dev and test; ``event_id`` ``<split>-<row>`` (row =
  1-based data row of that file), ``event_type`` ``purchase``, ``timestamp`` the unix time as
  ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), ``session_id`` empty.
- ``catalog.csv``: every item of item2index; item_id = the integer index, title = its ``.text``
  text (empty, and counted in the log, when the text file lacks it), category ``c<i_category>`` and
  brand ``b<i_brand>`` from item_meta.csv when present (category and brand are opaque codes, not
  names), description and price empty.
- ``queries.csv``: **header only** -- the source has no searches.
- ``holdout.csv`` (extra, benchmark protocol): ``event_id, user_id, item_id, timestamp, split, neg_items``,
  one row per dev/test line (event_id: its row in events.csv), split in {dev, test}, neg_items the
  negatives as space-separated item ids in source order (repeats kept). Models must rank each positive
  among its negatives with this file (``features.interaction_split: given``).
- ``relations.csv`` (extra, only when item_meta.csv has r_complement / r_substitute):
  ``item_id, related_item_id, relation`` with relation in {complement, substitute}.
- ``source.json``: ``{"source": "rechorus", "path": ..., "tables_absent": ["queries"],
  "extra_files": [...]}``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import contract
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.rawio import write_table
from pipelines.data.sources.reading import find_one, read_delimited

log = get_logger(__name__)

SOURCE = "rechorus"
SPLITS = ("train", "dev", "test")
EVENT_TYPE = "purchase"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
META_FILE = "item_meta.csv"
RELATIONS = {"r_complement": "complement", "r_substitute": "substitute"}
HOLDOUT_COLUMNS = ["event_id", "user_id", "item_id", "timestamp", "split", "neg_items"]
RELATION_COLUMNS = ["item_id", "related_item_id", "relation"]
_INT = r"-?\d+"
_ID_LIST = r"\[\s*(?:\d+\s*(?:,\s*\d+\s*)*)?\]"


def _read_tsv(path: Path, columns: tuple[str, ...], header: bool = True) -> pd.DataFrame:
    """A tab-separated file as strings; a DataError names the file when it is missing or malformed."""
    frame = read_delimited(
        path, columns, "tab-separated file", sep="\t", na_filter=False, quoting=csv.QUOTE_NONE,
        header=0 if header else None, names=None if header else list(columns), encoding="utf-8",
    )
    frame = frame.fillna("")
    for name in columns:
        frame[name] = frame[name].str.strip()
    return frame


def _check(values: pd.Series, pattern: str, path: Path, column: str, what: str, first_line: int = 2) -> None:
    """Raise a DataError naming the first line whose `column` does not fully match `pattern`."""
    bad = ~values.str.fullmatch(pattern)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        shown = values.iloc[row]
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise DataError(
            f"{path}: line {row + first_line}: {column} {shown!r} is not {what} ({int(bad.sum())} such rows)"
        )


def _iso(seconds: pd.Series) -> pd.Series:
    """Unix seconds as ISO-8601 UTC strings, each distinct value formatted once."""
    codes, distinct = pd.factorize(seconds.astype(np.int64))
    labels = pd.to_datetime(distinct, unit="s", utc=True).strftime(TIME_FORMAT).to_numpy(dtype=object)
    return pd.Series(labels[codes], index=seconds.index, dtype=object)


def _read_split(folder: Path, split: str) -> pd.DataFrame:
    path = folder / f"{split}.csv"
    columns = ("user_id", "item_id", "time") + (() if split == "train" else ("neg_items",))
    frame = _read_tsv(path, columns)
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    _check(frame["user_id"], r"\S+", path, "user_id", "a user id")
    _check(frame["item_id"], r"\d+", path, "item_id", "an integer item id")
    _check(frame["time"], _INT, path, "time", "a unix time in seconds")
    if "neg_items" in columns:
        _check(frame["neg_items"], _ID_LIST, path, "neg_items", "a [1, 2, ...] list of item ids")
    frame["timestamp"] = _iso(frame["time"])
    return frame


def _id_list(values: pd.Series) -> pd.Series:
    """'[1, 2, 3]' -> '1 2 3' (already checked against _ID_LIST)."""
    return values.str.replace(r"[\[\],]", " ", regex=True).str.split().str.join(" ")


def _read_text(path: Path) -> pd.DataFrame:
    """id<TAB>text with a header; the text may itself hold tabs (kept)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not lines:
        raise DataError(f"{path}: file is empty")
    header = lines[0].removeprefix("\ufeff").split("\t")
    if [name.strip() for name in header[:2]] != ["id", "text"]:
        raise DataError(f"{path}: header {lines[0][:40]!r} is not 'id<TAB>text'")
    series = pd.Series(lines[1:], dtype=object)
    series = series[series.str.strip() != ""]
    bad = ~series.str.contains("\t", regex=False)
    if bad.any():
        row = int(bad.index[bad.to_numpy()][0])
        raise DataError(f"{path}: line {row + 2}: no tab between id and text ({int(bad.sum())} such rows)")
    parts = series.str.split("\t", n=1, expand=True)
    return pd.DataFrame({"asin": parts[0].str.strip(), "text": parts[1].str.strip()})


def _read_meta(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    frame = _read_tsv(path, ("item_id",))
    _check(frame["item_id"], r"\d+", path, "item_id", "an integer item id")
    for column in RELATIONS:
        if column in frame.columns:
            _check(frame[column], _ID_LIST, path, column, "a [1, 2, ...] list of item ids")
    return frame


def _relations(meta: pd.DataFrame) -> pd.DataFrame | None:
    parts = []
    for column, relation in RELATIONS.items():
        if column not in meta.columns:
            continue
        related = _id_list(meta[column]).str.split()
        exploded = pd.DataFrame({"item_id": meta["item_id"], "related_item_id": related}).explode("related_item_id")
        exploded = exploded.dropna(subset=["related_item_id"])
        exploded["relation"] = relation
        parts.append(exploded)
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True)[RELATION_COLUMNS]


def convert(source_path: Path, out_dir: Path) -> dict[str, int]:
    """Write the three tables plus holdout.csv, relations.csv and source.json; return rows per table."""
    folder = Path(source_path)
    out_dir = Path(out_dir)
    if not folder.exists():
        raise DataError(f"{folder}: not found (rechorus expects a folder)")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (rechorus expects a folder with train.csv, dev.csv, test.csv)")
    index_path = find_one(folder, "*.item2index", "the rechorus layout")
    text_path = find_one(folder, "*.text", "the rechorus layout")

    # catalog
    index = _read_tsv(index_path, ("asin", "item_id"), header=False)
    _check(index["item_id"], r"\d+", index_path, "item_id", "an integer item id", first_line=1)
    duplicated = index["item_id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(f"{index_path}: line {row + 1}: item_id {index['item_id'].iloc[row]} indexed twice")
    texts = _read_text(text_path).drop_duplicates("asin")
    catalog = index.merge(texts, on="asin", how="left")
    catalog["text"] = catalog["text"].fillna("")
    untitled = int((catalog["text"] == "").sum())
    if untitled:
        log.warning("items without text: title left empty", extra={"file": str(text_path), "items": untitled})
    catalog = pd.DataFrame({
        "item_id": catalog["item_id"], "title": catalog["text"], "description": "",
        "category": "", "brand": "", "price": "",
    })
    meta = _read_meta(folder / META_FILE)
    relations = None
    if meta is not None:
        first = meta.drop_duplicates("item_id").set_index("item_id")
        for column, target, prefix in (("i_category", "category", "c"), ("i_brand", "brand", "b")):
            if column in first.columns:
                codes = catalog["item_id"].map(first[column]).fillna("")
                catalog[target] = codes.where(codes == "", prefix + codes)
        unknown = int((~meta["item_id"].isin(catalog["item_id"])).sum())
        if unknown:
            log.warning("item_meta rows for items not in item2index", extra={"file": META_FILE, "rows": unknown})
        relations = _relations(meta)

    # events and holdout
    frames = {split: _read_split(folder, split) for split in SPLITS}
    events = pd.concat(
        [
            pd.DataFrame({
                "event_id": split + "-" + pd.Series(np.arange(1, len(frame) + 1), index=frame.index).astype(str),
                "user_id": frame["user_id"],
                "item_id": frame["item_id"],
                "event_type": EVENT_TYPE,
                "timestamp": frame["timestamp"],
                "session_id": "",
            })
            for split, frame in frames.items()
        ],
        ignore_index=True,
    )
    holdout = pd.concat(
        [
            pd.DataFrame({
                "event_id": split + "-" + pd.Series(np.arange(1, len(frame) + 1), index=frame.index).astype(str),
                "user_id": frame["user_id"], "item_id": frame["item_id"], "timestamp": frame["timestamp"],
                "split": split, "neg_items": _id_list(frame["neg_items"]),
            })[HOLDOUT_COLUMNS]
            for split, frame in frames.items() if split != "train"
        ],
        ignore_index=True,
    )
    known = set(catalog["item_id"])
    outside = int((~events["item_id"].isin(known)).sum())
    if outside:
        log.warning("interactions with items not in item2index", extra={"folder": str(folder), "rows": outside})

    queries = pd.DataFrame(columns=contract.columns("queries"))
    write_table(catalog, out_dir, "catalog")
    write_table(events, out_dir, "events")
    write_table(queries, out_dir, "queries")
    holdout.to_csv(out_dir / "holdout.csv", index=False, encoding="utf-8")
    extra = ["holdout.csv"]
    relations_path = out_dir / "relations.csv"
    if relations is not None:
        relations.to_csv(relations_path, index=False, encoding="utf-8")
        extra.append("relations.csv")
    elif relations_path.exists():
        relations_path.unlink()  # stale from an earlier conversion
    marker = {"source": SOURCE, "path": str(source_path), "tables_absent": ["queries"], "extra_files": extra}
    (out_dir / "source.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    counts = {"catalog": len(catalog), "events": len(events), "queries": 0}
    log.info(
        "rechorus converted",
        extra={
            "folder": str(folder), "dataset": index_path.stem, "rows": counts, "holdout": len(holdout),
            "relations": 0 if relations is None else len(relations),
            "users": int(events["user_id"].nunique()),
        },
    )
    return counts
