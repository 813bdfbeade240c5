"""Ingest: any supported source written as the three canonical raw tables (stream: a base source plus the live
events of the stream sink)."""

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
BASE_SOURCES = ("sample", *DEFAULT_PATHS)  # each writes all three tables; stream adds its events to one of them


def ingest(source: str | None, out_dir: Path, settings: Settings, path: str | None = None) -> dict[str, int]:
    """Write catalog.csv, events.csv and queries.csv for `source` into out_dir; return rows per table.

    source and path default to params.yaml's ingest.source and ingest.path (what `dvc repro` runs).
    Source stream: the base source ingest.stream_base (at ingest.stream_base_path) is written first, then the
    stream sink's events are appended to its events.csv and the sink's catalog snapshot, when it has one, merged
    into its catalog.csv (pipelines/data/sources/stream.py); path is the sink.
    """
    out_dir = Path(out_dir)
    source = source or settings.ingest.source
    if source not in ("stream", *BASE_SOURCES):
        raise DataError(f"unknown source {source!r}: use sample, home-depot, rechorus, sequences or stream")
    if source == "stream":
        counts = _ingest_stream(out_dir, settings, path or _default_sink(settings))
    else:
        counts = _ingest_base(source, out_dir, settings, path or settings.ingest.path)
    log.info("ingested", extra={"source": source, "out": str(out_dir), "rows": counts})
    return counts


def _ingest_base(source: str, out_dir: Path, settings: Settings, path: str | None) -> dict[str, int]:
    """A source of all three tables: the generated sample, or a real dataset's adapter."""
    if source == "sample":
        from pipelines.data.sources import sample

        return sample.generate(settings.sample, out_dir)
    source_path = Path(path or DEFAULT_PATHS[source])
    if not source_path.exists():
        raise DataError(f"{source_path}: not found (source {source})")
    if source == "home-depot":
        from pipelines.data.sources import home_depot as adapter
    elif source == "rechorus":
        from pipelines.data.sources import rechorus as adapter
    else:
        from pipelines.data.sources import sequences as adapter
    return adapter.convert(source_path, out_dir)


def _default_sink(settings: Settings) -> str:
    """params' ingest.path when params name the stream source (it is the sink then), else stream.sink_path."""
    sink = (settings.ingest.path if settings.ingest.source == "stream" else None) or settings.stream.sink_path
    if not sink:
        raise DataError("source stream: no sink folder (give --path, or set stream.sink_path in params.yaml)")
    return sink


def _ingest_stream(out_dir: Path, settings: Settings, sink: str) -> dict[str, int]:
    """The base source's tables, then the sink's events appended to its events (each event id once) and the
    products of its catalog snapshot merged into its catalog (those the base lacks appended)."""
    from pipelines.data.sources import stream

    events, _ = stream.read_sink(Path(sink))  # first: a bad sink fails before anything is written
    snapshot = stream.read_catalog_snapshot(Path(sink))
    counts = _ingest_base(settings.ingest.stream_base, out_dir, settings, settings.ingest.stream_base_path)
    added = stream.append_events(events, out_dir)
    counts = {**counts, "events": counts["events"] + added["appended"]}
    if snapshot is not None:
        merged = stream.merge_catalog(snapshot, out_dir, settings.validate_.max_price)
        counts["catalog"] += merged["added"]
    return counts
