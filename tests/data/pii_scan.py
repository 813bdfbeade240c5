"""Find raw PII values anywhere in a folder of artifacts: parquet cells, and the bytes of every other file."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipelines.bench.faults.pii import file_texts
from pipelines.core import privacy


def raw_pii_values(raw_dir: Path) -> set[str]:
    """Every raw user id, and every email, phone and card number typed into the raw queries."""
    events = pd.read_csv(raw_dir / "events.csv", dtype=str, keep_default_na=False, encoding_errors="replace")
    queries = pd.read_csv(raw_dir / "queries.csv", dtype=str, keep_default_na=False, encoding_errors="replace")
    values = set(events["user_id"]) | set(queries["user_id"])
    for text in queries["query"]:
        values.update(privacy.EMAIL.findall(text))
        values.update(match for match in privacy.CARD_CANDIDATE.findall(text)
                      if privacy.luhn_valid(re.sub(r"\D", "", match)))
        values.update(privacy.PHONE.findall(text))
    return {value for value in values if value}


def find_pii(folders: list[Path], values: set[str]) -> list[tuple[str, str]]:
    """(file, value) for each raw value found; user ids match whole tokens only."""
    found = []
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            for text in file_texts(path):
                tokens = set(re.findall(r"[\w.@+-]+", text))
                found += [(str(path), value) for value in values
                          if (value in tokens if re.fullmatch(r"[\w-]+", value) else value in text)]
    return found
