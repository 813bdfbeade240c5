"""Clean and anonymize the valid tables.

catalog: text repair (mojibake, HTML entities, Unicode NFC, whitespace), exact and near
duplicates (same normalized title within a brand) merged into the first item, prices as floats.
events: exact duplicates dropped, item ids remapped to the kept item, timestamps to UTC,
sessions recomputed from inactivity gaps, user ids pseudonymized with a keyed hash (ids that already are
pseudonyms of that key, the stream sink's, kept).
queries: the same, plus emails, phone and card numbers in the query text replaced by tokens.
A source's optional tables (holdout, relations) get the same item id mapping.
No raw user id or PII value leaves this stage.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from pathlib import Path

import pandas as pd

from pipelines.core import contract, privacy
from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.data.text import normalize_text

log = get_logger(__name__)

TEXT_COLUMNS = {"catalog": ("title", "description", "brand", "category"), "queries": ("query",)}
_SPACES = re.compile(r"\s+")
_WORDS = re.compile(r"[0-9a-z]+")


def normalize_category(value: str | None) -> str | None:
    if value is None:
        return None
    parts = [part.strip() for part in value.split(">")]
    return contract.CATEGORY_SEPARATOR.join(part for part in parts if part) or None


def near_title_key(title: str) -> str:
    """Titles equal up to case, punctuation and spacing share this key."""
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", title).casefold()))


def read_valid(valid_dir: Path, table: str) -> pd.DataFrame:
    path = Path(valid_dir) / f"{table}.parquet"
    if not path.exists():
        raise DataError(f"{path}: not found (run validate first)")
    frame = pd.read_parquet(path)
    missing = [name for name in contract.columns(table) if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def drop_exact_duplicates(frame: pd.DataFrame, table: str) -> tuple[pd.DataFrame, int]:
    deduped = frame.drop_duplicates(subset=contract.columns(table), keep="first")
    return deduped, len(frame) - len(deduped)


def _normalize_columns(frame: pd.DataFrame, table: str) -> int:
    """Normalize the table's text columns in place; return how many cells changed."""
    changed = 0
    for name in TEXT_COLUMNS.get(table, ()):
        fix = normalize_category if name == "category" else normalize_text
        before = frame[name]
        after = before.map(fix)
        changed += int((before.fillna("\0") != after.fillna("\0")).sum())
        frame[name] = after
    return changed


def _reencoded(frame: pd.DataFrame) -> int:
    return int((frame["_reencoded"].fillna("") != "").sum()) if "_reencoded" in frame else 0


def clean_catalog(frame: pd.DataFrame, merge_near_duplicates: bool) -> tuple[pd.DataFrame, dict[str, str], dict]:
    rows_in = len(frame)
    frame, exact = drop_exact_duplicates(frame, "catalog")
    frame = frame.copy()
    repaired = _normalize_columns(frame, "catalog")
    frame["price"] = pd.to_numeric(frame["price"], errors="raise").astype("float64").round(2)
    id_map: dict[str, str] = {}
    if merge_near_duplicates:
        branded = frame[frame["brand"].notna()]
        keys = branded["brand"].str.casefold() + "\x1f" + branded["title"].map(near_title_key)
        canonical = branded.groupby(keys, sort=False)["item_id"].transform("first")
        merged = canonical[canonical != branded["item_id"]]
        id_map = dict(zip(branded.loc[merged.index, "item_id"], merged))
        frame = frame.drop(index=merged.index)
    stats = {"rows_in": rows_in, "rows_out": len(frame), "exact_duplicates": exact,
             "near_duplicates": len(id_map), "text_cells_normalized": repaired, "encoding_repaired": _reencoded(frame)}
    return frame[contract.columns("catalog")].reset_index(drop=True), id_map, stats


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, int]:
    """ISO-8601 strings to UTC instants; count the ones that carried another offset."""
    parsed = pd.to_datetime(values, utc=True, format="ISO8601")
    offset = values.notna() & ~values.fillna("").str.upper().str.endswith(("Z", "+00:00", "+0000", "+00"))
    return parsed, int(offset.sum())


def sessionize(events: pd.DataFrame, gap_minutes: int) -> pd.Series:
    """A new session starts at a user's first event and after every gap longer than gap_minutes."""
    ordered = events.sort_values(["user_id", "timestamp", "event_id"])
    gap = ordered.groupby("user_id")["timestamp"].diff() > pd.Timedelta(minutes=gap_minutes)
    first = ordered["user_id"] != ordered["user_id"].shift()
    number = (gap | first).astype(int).groupby(ordered["user_id"]).cumsum()
    session = ordered["user_id"].str.removeprefix(privacy.PSEUDONYM_PREFIX).str[:12] + "-" + number.astype(str)
    return ("s_" + session).reindex(events.index)


def pseudonymize_users(values: pd.Series, key: bytes) -> pd.Series:
    """User ids as keyed pseudonyms; a value that already is one (privacy.PSEUDONYM) is kept as it is.

    The stream's intake pseudonymized its events' user ids with this same key (ingest --source stream adds
    them to the base's events): hashing them again would give a shopper two ids, one for the base's history
    and one for their live events. A raw id of exactly that shape (u_ and 20 hex digits) carries no PII."""
    already = values.notna() & values.fillna("").str.fullmatch(privacy.PSEUDONYM.pattern)
    return values.where(already, privacy.pseudonymize(values, key))


def clean_events(frame: pd.DataFrame, id_map: dict[str, str], key: bytes, gap_minutes: int) -> tuple[pd.DataFrame, dict]:
    rows_in = len(frame)
    frame, exact = drop_exact_duplicates(frame, "events")
    frame = frame.copy()
    remapped = int(frame["item_id"].isin(id_map.keys()).sum())
    frame["item_id"] = frame["item_id"].replace(id_map)
    frame["timestamp"], converted = parse_timestamps(frame["timestamp"])
    frame["user_id"] = pseudonymize_users(frame["user_id"], key)
    frame["session_id"] = sessionize(frame, gap_minutes) if len(frame) else frame["session_id"]
    frame = frame.sort_values(["timestamp", "event_id"]).reset_index(drop=True)
    stats = {"rows_in": rows_in, "rows_out": len(frame), "exact_duplicates": exact,
             "item_ids_remapped": remapped,
             "timestamps_converted_to_utc": converted, "sessions": int(frame["session_id"].nunique())}
    return frame[contract.columns("events")], stats


def clean_queries(frame: pd.DataFrame, id_map: dict[str, str], key: bytes) -> tuple[pd.DataFrame, dict]:
    rows_in = len(frame)
    frame, exact = drop_exact_duplicates(frame, "queries")
    frame = frame.copy()
    repaired = _normalize_columns(frame, "queries")
    encoding = _reencoded(frame)
    frame["query"], masked = privacy.mask_column(frame["query"])
    frame["item_id"] = frame["item_id"].replace(id_map)
    frame["relevance"] = pd.to_numeric(frame["relevance"], errors="raise").astype("float64")
    frame["timestamp"], converted = parse_timestamps(frame["timestamp"])
    frame["user_id"] = pseudonymize_users(frame["user_id"], key)
    # Two judged items merged into one: one judgment, the mean of theirs.
    before = len(frame)
    frame = (frame.groupby(["query_id", "item_id"], sort=False, as_index=False)
             .agg(user_id=("user_id", "first"), query=("query", "first"), relevance=("relevance", "mean"),
                  timestamp=("timestamp", "first")))
    stats = {"rows_in": rows_in, "rows_out": len(frame), "exact_duplicates": exact,
             "judgments_merged": before - len(frame), "text_cells_normalized": repaired,
             "encoding_repaired": encoding, "pii_masked": masked, "timestamps_converted_to_utc": converted}
    return frame[contract.columns("queries")], stats


def clean_extra_tables(valid_dir: Path, id_map: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The source's optional tables (contract.EXTRA_TABLES) with merged item ids mapped to the kept ones."""
    tables = {}
    for name in contract.EXTRA_TABLES:
        path = Path(valid_dir) / f"{name}.parquet"
        if not path.exists():
            continue
        frame = pd.read_parquet(path)
        if "neg_items" in frame:
            frame["neg_items"] = frame["neg_items"].str.split().map(
                lambda ids: " ".join(id_map.get(item, item) for item in ids))
        for column in ("item_id", "related_item_id"):
            if column in frame:
                frame[column] = frame[column].replace(id_map)
        tables[name] = frame
    return tables


def clean(valid_dir: Path, out_dir: Path, settings: Settings, metrics_path: Path | None = None) -> dict:
    """Clean the valid tables of valid_dir into out_dir; return the repair counts per table."""
    valid_dir, out_dir = Path(valid_dir), Path(out_dir)
    tables = {table: read_valid(valid_dir, table) for table in contract.TABLES}
    key = privacy.load_key(settings.privacy)
    catalog, id_map, catalog_stats = clean_catalog(tables["catalog"], settings.clean.near_duplicates)
    events, events_stats = clean_events(tables["events"], id_map, key, settings.clean.session_gap_minutes)
    queries, queries_stats = clean_queries(tables["queries"], id_map, key)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for table, frame in (("catalog", catalog), ("events", events), ("queries", queries),
                         *clean_extra_tables(valid_dir, id_map).items()):
        frame.to_parquet(out_dir / f"{table}.parquet", index=False)
    id_map_frame = pd.DataFrame({"item_id": list(id_map), "kept_item_id": list(id_map.values())}, dtype=object)
    id_map_frame.to_parquet(out_dir / contract.ITEM_ID_MAP, index=False)
    stats = {"catalog": catalog_stats, "events": events_stats, "queries": queries_stats}
    if metrics_path:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    log.info("cleaned", extra={table: {"rows_in": s["rows_in"], "rows_out": s["rows_out"]} for table, s in stats.items()})
    return stats
