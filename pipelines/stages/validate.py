"""Validate: run the Great Expectations suites of expectations/ over each raw table.

Rows that fail any expectation go to quarantine/<table>.parquet with a `_reasons` column
naming each failed expectation; the others go to valid/<table>.parquet. Nothing is dropped:
for every table rows_in == rows_valid + rows_quarantined. Values are kept as read (strings);
the clean stage parses and normalizes them. A source's optional tables (contract.EXTRA_TABLES: the
given holdout, item relations) are passed through as valid/<name>.parquet, their columns as strings.
"""

from __future__ import annotations

import copy
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import track

from pipelines.core import contract, privacy, rawio
from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger

log = get_logger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
SOURCE_MANIFEST = "source.json"  # written by adapters; names tables the source does not have
EXACT_COPY = "_exact_copy"
REASONS = "_reasons"
REENCODED = "_reencoded"


@dataclass
class TableResult:
    table: str
    rows_in: int
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    failures: dict[str, int]  # expectation label -> rows failing it

    def summary(self) -> dict[str, int]:
        return {"rows_in": self.rows_in, "rows_valid": len(self.valid), "rows_quarantined": len(self.quarantined)}


def load_suite_spec(table: str, expectations_dir: Path = EXPECTATIONS_DIR) -> dict:
    path = Path(expectations_dir) / f"{table}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: expectation suite not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


def _param(settings: Settings, dotted: str):
    value = settings.model_dump(by_alias=True)
    for part in dotted.split("."):
        value = value[part]
    return value


def resolve_suite(spec: dict, settings: Settings, known_values: dict[str, list[str]]) -> dict:
    """Fill in the run-time parts of a suite: value sets from other tables, bounds from params."""
    spec = copy.deepcopy(spec)
    for expectation in spec["expectations"]:
        meta = expectation.get("meta", {})
        if "value_set_from" in meta:
            expectation["kwargs"]["value_set"] = known_values[meta["value_set_from"]]
        for kwarg, dotted in meta.get("kwargs_from", {}).items():
            expectation["kwargs"][kwarg] = _param(settings, dotted)
    return spec


def expectation_label(expectation: dict) -> str:
    kwargs = expectation["kwargs"]
    target = kwargs.get("column") or ",".join(kwargs.get("column_list", []))
    return f"{expectation['type']}({target})"


def validation_frame(raw: rawio.RawTable, run_key: bytes) -> pd.DataFrame:
    """The raw strings plus what the suites check besides them: parsed numbers and exact copies.

    GX writes the values that fail an expectation into Data Docs (HTML under data/validated, a DVC output),
    so what it sees carries no raw PII: free text with emails, phone and card numbers masked (to the same
    length: the title's length check gives the same verdict), user ids as
    pseudonyms under `run_key` (a key of this run only: equal ids stay equal, nothing links to clean's). Which
    rows fail is the same either way; the valid and quarantine tables keep the values as read."""
    frame = raw.frame.copy()
    for column in contract.columns_of_kind(raw.table, "text"):
        frame[column] = privacy.mask_column(frame[column], keep_length=True)[0]
    if "user_id" in frame.columns:
        frame["user_id"] = privacy.pseudonymize(frame["user_id"], run_key)
    for name in contract.columns_of_kind(raw.table, "float"):
        frame[f"{name}__value"] = pd.to_numeric(frame[name], errors="coerce")
    frame[EXACT_COPY] = raw.frame.duplicated(keep="first")
    frame.index.name = None  # GX reports plain row numbers for an unnamed index
    return frame


class SuiteRunner:
    """One GX file context under out_dir/gx: suites, checkpoints and Data Docs of this run."""

    def __init__(self, context_dir: Path):
        import great_expectations as gx

        self.gx = gx
        shutil.rmtree(context_dir / "gx", ignore_errors=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(context_dir))
        self.context.variables.progress_bars = {"globally": False}
        self.datasource = self.context.data_sources.add_pandas("raw_tables")
        self.run_key = secrets.token_bytes(32)  # pseudonyms of user ids in what GX sees (validation_frame)

    def run(self, table: str, spec: dict, frame: pd.DataFrame):
        gx = self.gx
        batch_definition = self.datasource.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = self.context.suites.add(
            gx.ExpectationSuite(name=table, expectations=spec["expectations"], meta=spec.get("meta", {}))
        )
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch_definition, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=table,
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        return next(iter(result.run_results.values())).results

    def docs_index(self) -> Path:
        return Path(self.context.root_directory) / "uncommitted" / "data_docs" / "local_site" / "index.html"


def _failed_rows(results, frame: pd.DataFrame, path: Path) -> tuple[dict[int, list[str]], dict[str, int]]:
    reasons: dict[int, list[str]] = {}
    failures: dict[str, int] = {}
    for result in results:
        config = result.expectation_config
        label = expectation_label({"type": config.type, "kwargs": config.kwargs})
        if result.exception_info and result.exception_info.get("raised_exception"):
            raise DataError(f"{path}: expectation {label} could not run: {result.exception_info['exception_message']}")
        rows = result.result.get("unexpected_index_list") or []
        if not result.success and not rows:
            raise DataError(f"{path}: table-level expectation {label} failed")
        failures[label] = len(rows)
        for row in rows:
            reasons.setdefault(int(row), []).append(label)
    return reasons, failures


def validate_table(raw: rawio.RawTable, spec: dict, runner: SuiteRunner) -> TableResult:
    frame = validation_frame(raw, runner.run_key)
    reasons, failures = _failed_rows(runner.run(raw.table, spec, frame), frame, raw.path)
    output = raw.frame.copy()
    output.insert(0, contract.ROW, output.index.astype("int64"))
    reencoded: dict[int, list[str]] = {}
    for row, column in raw.reencoded:
        reencoded.setdefault(row, []).append(column)
    output[REENCODED] = [",".join(reencoded.get(row, [])) for row in output.index]
    bad = output.index.isin(list(reasons))
    quarantined = output[bad].copy()
    quarantined[REASONS] = ["; ".join(reasons[row]) for row in quarantined.index]
    return TableResult(raw.table, len(output), output[~bad].reset_index(drop=True),
                       quarantined.reset_index(drop=True), failures)


def _absent_tables(raw_dir: Path) -> set[str]:
    manifest = raw_dir / SOURCE_MANIFEST
    if not manifest.exists():
        return set()
    try:
        return set(json.loads(manifest.read_text(encoding="utf-8")).get("tables_absent", []))
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


def _empty_result(table: str) -> TableResult:
    empty = pd.DataFrame({name: pd.Series(dtype=object) for name in [contract.ROW, *contract.columns(table), REENCODED]})
    empty[contract.ROW] = empty[contract.ROW].astype("int64")
    return TableResult(table, 0, empty, empty.assign(**{REASONS: pd.Series(dtype=object)}), {})


def _write(result: TableResult, out_dir: Path) -> None:
    for kind, frame in (("valid", result.valid), ("quarantine", result.quarantined)):
        folder = out_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / f"{result.table}.parquet", index=False)


def pass_extra_tables(raw_dir: Path, out_dir: Path) -> dict[str, int]:
    """The source's optional tables (contract.EXTRA_TABLES) that raw_dir holds, their columns as strings in
    out_dir/valid/<name>.parquet; rows per table. A table without one of its columns is a DataError."""
    counts = {}
    for name, columns in contract.EXTRA_TABLES.items():
        path = Path(raw_dir) / f"{name}.csv"
        if not path.exists():
            continue
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as exc:
            raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing required column(s) {', '.join(missing)}")
        frame[list(columns)].to_parquet(out_dir / "valid" / f"{name}.parquet", index=False)
        counts[name] = len(frame)
    return counts


def validate(raw_dir: Path, out_dir: Path, settings: Settings, metrics_path: Path | None = None,
             expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, dict[str, int]]:
    """Validate every table of raw_dir into out_dir; return the per-table counts."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    absent = _absent_tables(raw_dir)
    # Read every table first, so that an unreadable file fails fast, before any GX work.
    raws = {table: None if table in absent else rawio.read_table(raw_dir, table) for table in contract.TABLES}
    for kind in ("valid", "quarantine"):
        shutil.rmtree(out_dir / kind, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = SuiteRunner(out_dir)
    known_values: dict[str, list[str]] = {}
    results: dict[str, TableResult] = {}
    for table in track(contract.TABLES, description="validating", console=Console(stderr=True), transient=True):
        # catalog comes first: the others refer to its valid item ids
        raw = raws[table]
        if raw is None:
            results[table] = _empty_result(table)
        else:
            spec = resolve_suite(load_suite_spec(table, expectations_dir), settings, known_values)
            results[table] = validate_table(raw, spec, runner)
        _write(results[table], out_dir)
        if table == "catalog":
            known_values["catalog.item_id"] = sorted(results[table].valid["item_id"].dropna().unique().tolist())
        log.info("validated", extra={"table": table, **results[table].summary()})
    summary = {table: result.summary() for table, result in results.items()}
    extra = pass_extra_tables(raw_dir, out_dir)
    report = {
        "tables": summary,
        "extra_tables": extra,
        "failures": {table: result.failures for table, result in results.items()},
        # cells such as "NaN", "null" or blanks read as missing (rawio.MISSING_MARKERS): quarantined in a
        # required column, allowed in an optional one (a catalog without prices); counted here either way
        "missing_markers": {table: raw.missing_markers for table, raw in raws.items() if raw and raw.missing_markers},
        "data_docs": str(runner.docs_index()),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if metrics_path:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _check_bad_fraction(results, raws, out_dir, settings.validate_.max_bad_fraction, summary)
    return summary


def _check_bad_fraction(results: dict[str, TableResult], raws: dict, out_dir: Path, limit: float, summary: dict) -> None:
    for table, result in results.items():
        if result.rows_in and len(result.quarantined) / result.rows_in > limit:
            share = len(result.quarantined) / result.rows_in
            top = max(result.failures, key=result.failures.get)
            raise DataError(
                f"{raws[table].path}: {share:.1%} of rows quarantined, above validate.max_bad_fraction={limit:.1%} "
                f"(most: {top}); see {out_dir / 'quarantine' / (table + '.parquet')}",
                details=summary,
            )
