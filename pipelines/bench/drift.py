"""Drift benchmark: detection over seeded shifted windows of the generated shop, false alarms over stable ones."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipelines.bench.workspace import bench_params
from pipelines.core.config import SampleParams, Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.stages.monitor import (
    NEW_VOCABULARY,
    SHIFTS,
    MonitorParams,
    catalog_vocabulary,
    decide,
    monitoring_frames,
    read_current,
    window_drift,
)

log = get_logger(__name__)


class DriftBenchParams(BaseModel):
    """benchmarks/params.yaml `drift:` (the thresholds under test are params.yaml `monitor:`)."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(ge=1)  # shifted windows per injected shift
    stable_windows: int = Field(ge=1)
    seed: int  # the bench shop's seed; window k's shift is seeded seed + k
    reference_days: int = Field(ge=1)  # the training span before the first window
    category_boost: float = Field(gt=1)  # one department's events weigh this much more (a promotion)
    price_factor: float = Field(gt=0)  # every price times this (inflation, a currency change)
    new_query_share: float = Field(gt=0, le=1)  # share of searches for a new product line


def generated_tables(sample: SampleParams, folder: Path) -> dict[str, pd.DataFrame]:
    """A defect-free sample shop read straight from its raw CSVs (the monitor reads contract columns only)."""
    from pipelines.data.sources import sample as generator

    generator.generate(sample, folder)
    tables = read_current(folder)
    tables["catalog"]["price"] = pd.to_numeric(tables["catalog"]["price"], errors="coerce")
    for table in ("events", "queries"):
        tables[table]["timestamp"] = pd.to_datetime(tables[table]["timestamp"], utc=True)
    return tables


def time_slice(tables: dict[str, pd.DataFrame], start: pd.Timestamp, end: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The catalog with the events and queries of [start, end)."""
    def within(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)].reset_index(drop=True)

    return {"catalog": tables["catalog"], "events": within(tables["events"]), "queries": within(tables["queries"])}


def inject_shift(tables: dict[str, pd.DataFrame], shift: str, bench: DriftBenchParams,
                 rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    tables = {name: frame.copy() for name, frame in tables.items()}
    if shift == "category_mix":
        departments = tables["catalog"].set_index("item_id")["category"].str.split(">").str[0].str.strip()
        event_departments = tables["events"]["item_id"].map(departments)
        boosted = rng.choice(sorted(event_departments.dropna().unique()))
        weight = np.where(event_departments == boosted, bench.category_boost, 1.0)
        keep = rng.choice(len(weight), size=len(weight), replace=True, p=weight / weight.sum())
        tables["events"] = tables["events"].iloc[np.sort(keep)].reset_index(drop=True)
    elif shift == "price_scale":
        tables["catalog"]["price"] = tables["catalog"]["price"] * bench.price_factor
    elif shift == "query_vocabulary":
        ids = tables["queries"]["query_id"].drop_duplicates().to_numpy()
        chosen = set(rng.choice(ids, size=max(1, int(round(len(ids) * bench.new_query_share))), replace=False))
        new_text = {qid: " ".join(rng.choice(NEW_VOCABULARY, size=int(rng.integers(1, 4)), replace=False))
                    for qid in chosen}
        queries = tables["queries"]
        tables["queries"] = queries.assign(query=queries["query_id"].map(new_text).fillna(queries["query"]))
    else:
        raise DataError(f"unknown shift {shift!r}: use {', '.join(SHIFTS)}")
    return tables


def bench_shop(settings: Settings, params: MonitorParams, bench: DriftBenchParams) -> SampleParams:
    """One long defect-free shop: the reference span, then one window per stable and per shifted trial.
    Windows of one shop (same users, same catalog) are what a monitor sees from day to day."""
    days = bench.reference_days + (bench.stable_windows + bench.trials) * params.window_days
    per_day = settings.sample.n_queries / settings.sample.days
    return settings.sample.model_copy(update={"seed": bench.seed, "days": days, "defect_rate": 0.0,
                                              "n_queries": max(10, int(round(per_day * days)))})


def drift_bench(settings: Settings, json_out: Path | None = None, workdir: Path | None = None,
                bench_file: Path | None = None) -> dict:
    """Detection over seeded shifted windows and false alarms over stable ones, all against one reference."""
    import tempfile

    from rich.progress import Progress

    params = settings.monitor
    bench = bench_params("drift", DriftBenchParams, bench_file)
    began = time.perf_counter()
    shop = bench_shop(settings, params, bench)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tables = generated_tables(shop, Path(tmp) / "shop")
    start = pd.Timestamp(shop.start_date, tz="UTC")
    window = pd.Timedelta(days=params.window_days)
    reference_end = start + pd.Timedelta(days=bench.reference_days)
    reference_tables = time_slice(tables, start, reference_end)
    vocabulary = catalog_vocabulary(reference_tables["catalog"])
    reference = monitoring_frames(reference_tables, vocabulary)
    stable, shifted = [], {shift: [] for shift in SHIFTS}
    with Progress(transient=True) as progress:
        task = progress.add_task("drift bench", total=bench.stable_windows + bench.trials)
        for k in range(bench.stable_windows + bench.trials):
            current = time_slice(tables, reference_end + k * window, reference_end + (k + 1) * window)
            if k < bench.stable_windows:
                scores = window_drift(reference, monitoring_frames(current, vocabulary), params.drift)
                stable.append(decide(scores, {}, params) | {"window": k})
            else:
                for shift in SHIFTS:
                    moved = inject_shift(current, shift, bench, np.random.default_rng(bench.seed + k))
                    scores = window_drift(reference, monitoring_frames(moved, vocabulary), params.drift)
                    shifted[shift].append(decide(scores, {}, params) | {"window": k})
            progress.advance(task)
    result = _bench_summary(stable, shifted, params, bench, time.perf_counter() - began)
    result["windows"] = {"reference_days": bench.reference_days, "window_days": params.window_days,
                         "events_per_window": round(len(tables["events"]) / shop.days * params.window_days),
                         "queries_per_window": round(shop.n_queries / shop.days * params.window_days)}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("drift bench", extra={k: result[k] for k in ("trials", "detected", "stable_windows", "false_alarms")})
    return result


def _bench_summary(stable: list[dict], shifted: dict[str, list[dict]], params: MonitorParams, bench: DriftBenchParams,
                   seconds: float) -> dict:
    def score_range(decisions: list[dict]) -> dict:
        columns = sorted({c for d in decisions for c in d["scores"]})
        return {c: [min(d["scores"][c] for d in decisions), max(d["scores"][c] for d in decisions)] for c in columns}

    per_shift = {shift: {"trials": len(runs), "detected": sum(d["retrain"] for d in runs),
                         "drifted_columns": dict(Counter(c for d in runs for c in d["drifted"])),
                         "score_range": score_range(runs)}
                 for shift, runs in shifted.items()}
    return {
        "trials": sum(len(runs) for runs in shifted.values()),
        "detected": sum(detail["detected"] for detail in per_shift.values()),
        "stable_windows": len(stable),
        "false_alarms": sum(d["retrain"] for d in stable),
        "shifts": per_shift,
        "stable": {"score_range": score_range(stable),
                   "false_alarm_columns": dict(Counter(c for d in stable for c in d["drifted"]))},
        "thresholds": {c: check.threshold for c, check in params.drift.items()},
        "injected": bench.model_dump(),
        "seconds": round(seconds, 1),
    }


