"""The canonical raw tables: columns, kinds and allowed values.

Every source adapter writes these three CSV files (UTF-8, header row, comma separated),
the GX suites in expectations/ enforce them, and the clean stage relies on them.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
CATEGORY_SEPARATOR = " > "
RELEVANCE_MIN, RELEVANCE_MAX = 0.0, 3.0
TABLES = ("catalog", "events", "queries")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # id | text | float | timestamp | enum
    required: bool  # an empty value is a defect
    doc: str


CONTRACT: dict[str, tuple[Column, ...]] = {
    "catalog": (
        Column("item_id", "id", True, "unique product id"),
        Column("title", "text", True, "product title"),
        Column("description", "text", False, "free text"),
        Column("category", "text", False, "category path such as 'Office > Paper'"),
        Column("brand", "text", False, "brand name"),
        Column("price", "float", False, "price >= 0; empty when the source has no prices"),
    ),
    "events": (
        Column("event_id", "id", True, "unique event id"),
        Column("user_id", "id", True, "who acted (pseudonymized by clean)"),
        Column("item_id", "id", True, "a catalog item_id"),
        Column("event_type", "enum", True, "one of " + ", ".join(EVENT_TYPES)),
        Column("timestamp", "timestamp", True, "ISO-8601, UTC or with an offset"),
        Column("session_id", "id", False, "recomputed by clean from inactivity gaps"),
    ),
    "queries": (
        Column("query_id", "id", True, "one search; several rows judge several items"),
        Column("user_id", "id", False, "who searched; may be empty"),
        Column("query", "text", True, "the text typed"),
        Column("item_id", "id", True, "a catalog item_id"),
        Column("relevance", "float", True, "graded judgment from 0 to 3"),
        Column("timestamp", "timestamp", False, "ISO-8601; empty when the source has none"),
    ),
}

# The key that must be unique among the distinct rows of each table.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "catalog": ("item_id",),
    "events": ("event_id",),
    "queries": ("query_id", "item_id"),
}


def columns(table: str) -> list[str]:
    return [column.name for column in CONTRACT[table]]


def required_columns(table: str) -> list[str]:
    return [column.name for column in CONTRACT[table] if column.required]


def columns_of_kind(table: str, kind: str) -> list[str]:
    return [column.name for column in CONTRACT[table] if column.kind == kind]


def file_name(table: str) -> str:
    return f"{table}.csv"

# Files and columns the data stages write that later ones (and the defect audit) read.
ROW = "_row"  # a validated row's number in its raw file
ITEM_ID_MAP = "item_id_map.parquet"  # clean: merged duplicate item ids -> the kept id

# Optional tables a source may add beside the three (<name>.csv in the raw folder): validate passes their
# columns through as strings (valid/<name>.parquet), clean maps their item ids to the kept ones, features
# turns them into positions. No user id: holdout rows name their held-out event.
EXTRA_TABLES: dict[str, tuple[str, ...]] = {
    "holdout": ("event_id", "split", "neg_items"),  # a held-out event, its split (dev | test), its given
                                                    # negatives (space-separated item ids, repeats kept)
    "relations": ("item_id", "related_item_id", "relation"),  # explicit item relations (complement, substitute)
}
