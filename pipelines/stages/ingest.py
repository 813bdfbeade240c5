"""Ingest: any supported source written as the three canonical raw tables."""

from __future__ import annotations

from pathlib import Path

from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger

log = get_logger(__name__)

# Where each real dataset lies when no --path is given (relative to the project root).
DEFAULT_PATHS = {
    "home-depot": "../shared/datasets/home-depot-search-relevance",
    "rechorus": "../shared/datasets/amazon-office",
    "sequences": "../shared/datasets/amazon-sequences/Beauty.txt",
}


def ingest(source: str | None, out_dir: Path, settings: Settings, path: str | None = None) -> dict[str, int]:
    """Write catalog.csv, events.csv and queries.csv for `source` into out_dir; return rows per table.

    source and path default to params.yaml's ingest.source and ingest.path (what `dvc repro` runs).
    """
    out_dir = Path(out_dir)
    source, path = source or settings.ingest.source, path or settings.ingest.path
    if source not in ("sample", *DEFAULT_PATHS):
        raise DataError(f"unknown source {source!r}: use sample, home-depot, rechorus or sequences")
    if source == "sample":
        from pipelines.data.sources import sample

        counts = sample.generate(settings.sample, out_dir)
    else:
        source_path = Path(path or DEFAULT_PATHS[source])
        if not source_path.exists():
            raise DataError(f"{source_path}: not found (source {source})")
        if source == "home-depot":
            from pipelines.data.sources import home_depot as adapter
        elif source == "rechorus":
            from pipelines.data.sources import rechorus as adapter
        else:
            from pipelines.data.sources import sequences as adapter
        counts = adapter.convert(source_path, out_dir)
    log.info("ingested", extra={"source": source, "out": str(out_dir), "rows": counts})
    return counts
