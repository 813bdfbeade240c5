"""Home Depot Product Search Relevance (Kaggle) as the canonical raw tables.

Input: a folder holding ``train.csv`` or that CSV file itself, with the columns
``id, product_uid, product_title, search_term, relevance`` (relevance 1-3, averaged over raters).
The file is encoded **Latin-1, not UTF-8**; it is read with ``encoding="latin-1"``, which maps
every byte to one character, so nothing is lost and the output (UTF-8) keeps the original bytes
recoverable with ``text.encode("latin-1")``.

Known dirt kept as is for the clean stage (only titles; search terms are plain ASCII): 197
distinct titles hold byte runs such as ``å¡`` (a degree sign) or ``\\x89Ûªs`` (an apostrophe).
They are UTF-8 text that went through Windows-1252 and then Mac Roman. ``ftfy.fix_text`` alone
repairs almost none of them; ``ftfy.fix_text(title.encode("latin-1").decode("mac_roman"))``
repairs 155, and about 40 keep damage no tool can undo (``è_`` for a degree sign whose second byte
was lost, ``â"¢`` for a trade mark sign).

Output in ``out_dir``:

- ``catalog.csv``: one row per distinct ``product_uid`` (item_id = product_uid, title = the first
  product_title seen for it); description, category, brand and price are empty (not in the source).
- ``queries.csv``: one row per judged pair. ``query_id`` is one id per distinct *normalized*
  search term (casefolded, whitespace collapsed, stripped), numbered in order of first appearance
  as ``hd00001``, ``hd00002``...; ``query`` is the search term as given; ``user_id`` and
  ``timestamp`` are empty; ``relevance`` is the source relevance minus 1 (1..3 -> 0..2), with up to
  4 decimals. Pairs whose (query_id, item_id) repeat are all kept (validate decides) and counted
  in the log.
- ``events.csv``: **header only** -- the source has no interactions.
- ``source.json``: ``{"source": "home-depot", "path": ..., "tables_absent": ["events"]}``, the
  marker that allows the header-only events table.
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
from pipelines.data.sources.reading import read_delimited

log = get_logger(__name__)

SOURCE = "home-depot"
FILE_NAME = "train.csv"
ENCODING = "latin-1"
INPUT_COLUMNS = ("id", "product_uid", "product_title", "search_term", "relevance")
RELEVANCE_LOW, RELEVANCE_HIGH = 1.0, 3.0
QUERY_PREFIX = "hd"


def _locate(source_path: Path) -> Path:
    source_path = Path(source_path)
    if not source_path.exists():
        raise DataError(f"{source_path}: not found (home-depot expects a folder with {FILE_NAME} or the CSV file)")
    if source_path.is_dir():
        path = source_path / FILE_NAME
        if not path.is_file():
            raise DataError(f"{path}: file not found (home-depot expects {FILE_NAME} in {source_path})")
        return path
    return source_path


def _read(path: Path) -> pd.DataFrame:
    # The python engine reads fields missing from a short line as NaN, which is checked below.
    frame = read_delimited(path, tuple(name for name in INPUT_COLUMNS if name != "id"), "CSV",
                           encoding=ENCODING, engine="python")
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    short = frame.isna().any(axis=1)
    if short.any():
        row = int(np.flatnonzero(short.to_numpy())[0])
        fields = int(frame.iloc[row].notna().sum())
        raise DataError(
            f"{path}: line {row + 2}: {fields} fields where the header has {len(frame.columns)} "
            f"({int(short.sum())} such lines)"
        )
    return frame


def _relevance(frame: pd.DataFrame, path: Path) -> pd.Series:
    """Source relevance (1..3) shifted to 0..2, as strings with up to 4 decimals; empty stays empty."""
    text = frame["relevance"].str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}: relevance {text.iloc[row]!r} is not a number ({int(bad.sum())} such rows)"
        )
    out_of_range = (values < RELEVANCE_LOW) | (values > RELEVANCE_HIGH)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range.to_numpy())[0])
        raise DataError(
            f"{path}: line {row + 2}: relevance {text.iloc[row]} outside the source scale "
            f"{RELEVANCE_LOW:g}-{RELEVANCE_HIGH:g} ({int(out_of_range.sum())} such rows)"
        )
    shifted = (values - RELEVANCE_LOW).round(4)
    out = shifted.astype(str).str.replace(r"\.0$", "", regex=True)
    return out.where(values.notna(), "")


def normalize_query(terms: pd.Series) -> pd.Series:
    """Casefold, collapse runs of whitespace to one space, strip."""
    return terms.str.casefold().str.replace(r"\s+", " ", regex=True).str.strip()


def _write_marker(out_dir: Path, source_path: Path, absent: list[str]) -> None:
    marker = {"source": SOURCE, "path": str(source_path), "tables_absent": absent}
    (out_dir / "source.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def convert(source_path: Path, out_dir: Path) -> dict[str, int]:
    """Write catalog.csv, queries.csv, header-only events.csv and source.json; return rows per table."""
    path = _locate(Path(source_path))
    out_dir = Path(out_dir)
    frame = _read(path)
    item_ids = frame["product_uid"].str.strip()
    titles = frame["product_title"]

    # catalog: first title per product, in order of first appearance
    first = ~item_ids.duplicated()
    catalog = pd.DataFrame({name: "" for name in contract.columns("catalog")}, index=frame.index[first])
    catalog["item_id"] = item_ids[first]
    catalog["title"] = titles[first]
    pairs = pd.DataFrame({"item": item_ids, "title": titles}).drop_duplicates()
    conflicting = int(pairs["item"].duplicated().sum())
    if conflicting:
        log.warning(
            "products with several titles: kept the first", extra={"file": str(path), "products": conflicting},
        )

    # queries: one row per judged pair
    normalized = normalize_query(frame["search_term"])
    codes, uniques = pd.factorize(normalized, sort=False)
    width = max(5, len(str(len(uniques))))
    query_ids = pd.Series(codes + 1, index=frame.index).astype(str).str.zfill(width).radd(QUERY_PREFIX)
    queries = pd.DataFrame({
        "query_id": query_ids,
        "user_id": "",
        "query": frame["search_term"],
        "item_id": item_ids,
        "relevance": _relevance(frame, path),
        "timestamp": "",
    })
    repeated = int(queries.duplicated(["query_id", "item_id"]).sum())
    if repeated:
        log.warning(
            "repeated (query_id, item_id) pairs kept for validate",
            extra={"file": str(path), "rows": repeated},
        )

    events = pd.DataFrame(columns=contract.columns("events"))
    write_table(catalog, out_dir, "catalog")
    write_table(queries, out_dir, "queries")
    write_table(events, out_dir, "events")
    _write_marker(out_dir, Path(source_path), ["events"])
    counts = {"catalog": len(catalog), "events": 0, "queries": len(queries)}
    log.info(
        "home-depot converted",
        extra={
            "file": str(path), "rows": counts, "queries_raw": int(frame["search_term"].nunique()),
            "queries_normalized": len(uniques), "encoding": ENCODING,
        },
    )
    return counts
