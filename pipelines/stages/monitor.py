"""Monitoring: the latest window of the shop against the training reference, and the retrain decision.

Drift: per monitored column an Evidently 0.7 `ValueDrift` (a distance method, so a column drifts
when its score reaches its threshold), on two frames built from the canonical tables:
  events  one row per event: department (category mix), event_type (funnel mix), price (price scale)
  queries one row per search: n_tokens, n_chars, oov_rate (share of its words that no word of the
          reference catalog holds: the query vocabulary)
Quality: a DataSummaryPreset per frame (in the HTML reports), and recommendation proxies from the
feedback log when one exists: CTR, catalog coverage, popularity bias, novelty.
The decision (`decide`) is pure: scores and proxies in, {retrain, reasons} out. Every tunable is in
params.yaml `monitor:`.

The feedback log (written by the serving side; absent is fine): JSON lines or parquet rows, one per
served list, with `items` (the shown item ids in order) and `clicked` (a list of the clicked ids, one
id, or null); `timestamp` optional (epoch seconds or ISO text). A folder is read as all its *.jsonl /
*.parquet files, except the service's own log (served.jsonl + events.jsonl, pipelines/serving/feedback_log.py),
which is joined. Lists served less than `monitor.feedback_settle_minutes` ago are left out of the quality
proxies: their clicks may still come.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import metrics
from pipelines.core.config import Settings
from pipelines.core.contract import CATEGORY_SEPARATOR
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.params import MONITORED_COLUMNS, DriftCheck, MonitorParams
from pipelines.feedback.log import SERVED, served_lists

log = get_logger(__name__)

EVENT_COLUMNS = {"department": "categorical", "event_type": "categorical", "price": "numerical"}
QUERY_COLUMNS = {"n_tokens": "numerical", "n_chars": "numerical", "oov_rate": "numerical"}
assert (*EVENT_COLUMNS, *QUERY_COLUMNS) == MONITORED_COLUMNS, "params.MONITORED_COLUMNS: the columns built here"
_WORDS = re.compile(r"[^\W\d_]{2,}")
SHIFTS = ("category_mix", "price_scale", "query_vocabulary")
# Words of product lines the sample shop never sells: what a new trend in the search box looks like.
NEW_VOCABULARY = ("drone", "vr", "headset", "smartwatch", "kombucha", "matcha", "pickleball", "paddle", "sauna",
                  "blanket", "crypto", "wallet", "espresso", "grinder", "skateboard", "gimbal", "terrarium",
                  "ukulele", "telescope", "hoverboard", "airfryer", "liners", "retinol", "collagen")


# --------------------------------------------------------------------------------------------
# Tables to monitoring frames
# --------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORDS.findall(str(text).casefold())


def catalog_vocabulary(catalog: pd.DataFrame) -> set[str]:
    columns = [c for c in ("title", "description", "text", "brand", "category") if c in catalog]
    return {word for column in columns for text in catalog[column].fillna("") for word in words(text)}


def event_frame(events: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """One row per event with its item's department and price."""
    items = catalog.drop_duplicates("item_id").set_index("item_id")
    category = events["item_id"].map(items["category"]).fillna("")
    return pd.DataFrame({
        "department": category.str.split(CATEGORY_SEPARATOR.strip()).str[0].str.strip().replace("", "unknown"),
        "event_type": events["event_type"].astype(str).to_numpy(),
        "price": pd.to_numeric(events["item_id"].map(items["price"]), errors="coerce").to_numpy(dtype=float),
    })


def query_frame(queries: pd.DataFrame, vocabulary: set[str]) -> pd.DataFrame:
    """One row per search (a query id judges several items but was typed once)."""
    texts = queries.drop_duplicates("query_id")["query"].fillna("").astype(str)
    tokens = texts.map(words)
    return pd.DataFrame({
        "n_tokens": tokens.map(len).to_numpy(dtype=float),
        "n_chars": texts.str.len().to_numpy(dtype=float),
        "oov_rate": tokens.map(lambda ws: sum(w not in vocabulary for w in ws) / len(ws) if ws else 0.0)
        .to_numpy(dtype=float),
    })


def latest_window(frame: pd.DataFrame, days: int) -> pd.DataFrame:
    """Rows of the last `days` days before the newest timestamp; rows without one are kept."""
    stamps = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce") if "timestamp" in frame else None
    if stamps is None or stamps.isna().all():
        return frame
    start = stamps.max() - pd.Timedelta(days=days)
    return frame[(stamps > start) | stamps.isna()]


def _read_table(folder: Path, table: str) -> pd.DataFrame:
    for path in (folder / f"{table}.parquet", folder / f"{table}.csv"):
        if path.exists():
            if path.suffix == ".parquet":
                return pd.read_parquet(path)
            return pd.read_csv(path, dtype=str, keep_default_na=False).replace({"": None})
    raise DataError(f"{folder / table}.parquet: not found (nor .csv)")


def read_current(folder: Path) -> dict[str, pd.DataFrame]:
    return {table: _read_table(Path(folder), table) for table in ("catalog", "events", "queries")}


def recent_sink_events(sink: Path, since: datetime) -> pd.DataFrame:
    """The live stream sink's events (pipelines/feedback/sink.py) in its hourly partitions from `since`'s hour on,
    each event id once: what shoppers did since the last ingest, for the drift check."""
    from pipelines.data.sources.stream import read_sink

    return read_sink(sink, since)[0]


def read_reference(features_dir: Path) -> dict[str, pd.DataFrame]:
    """features' train split as canonical tables: what the models were fitted on."""
    features_dir = Path(features_dir)
    for name in ("items", "interactions", "judgments"):
        if not (features_dir / f"{name}.parquet").exists():
            raise DataError(f"{features_dir / name}.parquet: not found (run the features stage first)")
    items = pd.read_parquet(features_dir / "items.parquet")
    interactions = pd.read_parquet(features_dir / "interactions.parquet")
    judgments = pd.read_parquet(features_dir / "judgments.parquet")
    ids = items.set_index("position")["item_id"]
    train = interactions[interactions["split"] == "train"]
    return {
        "catalog": items.rename(columns={"text": "description"}),
        "events": pd.DataFrame({"item_id": train["item"].map(ids), "event_type": train["event_type"],
                                "timestamp": train["timestamp"], "user_id": train["user"]}),
        "queries": judgments[judgments["split"] == "train"].assign(item_id=lambda j: j["item"].map(ids)),
    }


def monitoring_frames(tables: dict[str, pd.DataFrame], vocabulary: set[str]) -> dict[str, pd.DataFrame]:
    return {"events": event_frame(tables["events"], tables["catalog"]),
            "queries": query_frame(tables["queries"], vocabulary)}


# --------------------------------------------------------------------------------------------
# Evidently
# --------------------------------------------------------------------------------------------


def _dataset(frame: pd.DataFrame, kinds: dict[str, str]):
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(numerical_columns=[c for c, k in kinds.items() if k == "numerical"],
                                categorical_columns=[c for c, k in kinds.items() if k == "categorical"])
    return Dataset.from_pandas(frame[list(kinds)], data_definition=definition)


def _frame_kinds(name: str) -> dict[str, str]:
    return EVENT_COLUMNS if name == "events" else QUERY_COLUMNS


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, name: str, checks: dict[str, DriftCheck],
                 with_summary: bool = False):
    """An Evidently snapshot with one ValueDrift per checked column of this frame (and a data summary)."""
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataSummaryPreset

    kinds = _frame_kinds(name)
    columns = [column for column in kinds if column in checks]
    probes = [ValueDrift(column=c, method=checks[c].method, threshold=checks[c].threshold) for c in columns]
    report = Report(probes + ([DataSummaryPreset()] if with_summary else []))
    return report.run(current_data=_dataset(current, kinds), reference_data=_dataset(reference, kinds))


def drift_scores(snapshot) -> dict[str, float]:
    """column -> drift score, from the snapshot's ValueDrift results."""
    scores = {}
    for result in snapshot.dict()["metrics"]:
        config = result.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            scores[config["column"]] = float(result["value"])
    return scores


def window_drift(reference: dict[str, pd.DataFrame], current: dict[str, pd.DataFrame],
                 checks: dict[str, DriftCheck]) -> dict[str, float]:
    scores = {}
    for name in ("events", "queries"):
        if len(reference[name]) and len(current[name]):
            scores.update(drift_scores(drift_report(reference[name], current[name], name, checks)))
    return scores


# --------------------------------------------------------------------------------------------
# Recommendation-quality proxies and the decision
# --------------------------------------------------------------------------------------------


def read_feedback(path: Path) -> pd.DataFrame | None:
    """The served lists and their clicks, or None when no log exists yet."""
    path = Path(path)
    if path.is_dir() and (path / SERVED).exists():  # the service's own log: served lists joined with events
        lists = served_lists(path)
        return lists if len(lists) else None
    files = sorted([*path.glob("*.jsonl"), *path.glob("*.parquet")]) if path.is_dir() else [path]
    files = [file for file in files if file.exists() and file.stat().st_size > 0]
    if not files:
        return None
    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_json(f, lines=True) for f in files]
    feedback = pd.concat(frames, ignore_index=True)
    if "items" not in feedback:
        raise DataError(f"{path}: feedback rows need an `items` list (the shown item ids)")
    return feedback


def _clicked(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def novelty(top_lists, popularity: dict, n_items: int) -> float:
    """Mean self-information -log2 p(item) of the shown items, p from add-one smoothed training counts."""
    total = sum(popularity.values()) + max(n_items, 1)
    shown = [-math.log2((popularity.get(item, 0) + 1) / total) for top in top_lists for item in top]
    return float(np.mean(shown)) if shown else 0.0


def served_at(stamps: pd.Series) -> pd.Series:
    """When each list was served (UTC): the service logs epoch seconds, other logs may hold ISO text."""
    if pd.api.types.is_datetime64_any_dtype(stamps):  # pd.read_json parses a `timestamp` column itself
        return stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    seconds = pd.to_numeric(stamps, errors="coerce")
    as_epoch = pd.to_datetime(seconds, unit="s", utc=True)
    as_text = pd.to_datetime(stamps.where(seconds.isna()).astype("string"), utc=True, errors="coerce", format="mixed")
    return as_epoch.fillna(as_text)


def settled_feedback(feedback: pd.DataFrame | None, settle_minutes: float,
                     now: datetime) -> tuple[pd.DataFrame | None, int]:
    """(the served lists old enough to have had their clicks, how many younger ones were left out).

    A list served minutes ago has no click yet because its shopper has not had the time, not because it was
    bad; counted, a fresh log reads as CTR 0. Lists without a timestamp cannot be aged and are kept.
    """
    if feedback is None or "timestamp" not in feedback:
        return feedback, 0
    cutoff = pd.Timestamp(now).tz_convert("UTC") - pd.Timedelta(minutes=settle_minutes)
    stamps = served_at(feedback["timestamp"])
    young = stamps.notna() & (stamps > cutoff)
    return feedback[~young].reset_index(drop=True), int(young.sum())


def quality_proxies(feedback: pd.DataFrame | None, popularity: dict, n_items: int) -> dict:
    if feedback is None or feedback.empty:
        return {"feedback_lists": 0}
    top_lists = [list(items) for items in feedback["items"]]
    clicks = feedback["clicked"].map(_clicked) if "clicked" in feedback else pd.Series([[]] * len(feedback))
    return {
        "feedback_lists": len(top_lists),
        "ctr": float(np.mean([len(c) > 0 for c in clicks])),
        "coverage": metrics.catalog_coverage(top_lists, n_items),
        "popularity_bias": metrics.popularity_bias(top_lists, popularity),
        "novelty": novelty(top_lists, popularity, n_items),
    }


def feedback_quality(path: Path, popularity: dict, n_items: int, params: MonitorParams, now: datetime) -> dict:
    """The recommendation proxies of the feedback log at `path`, over its settled lists only."""
    feedback, young_lists = settled_feedback(read_feedback(path), params.feedback_settle_minutes, now)
    proxies = quality_proxies(feedback, popularity, n_items)
    if young_lists:
        proxies["young_lists"] = young_lists  # served too recently to judge: not in the proxies above
    return proxies


def decide(scores: dict[str, float], proxies: dict, params: MonitorParams) -> dict:
    """Retrain when a monitored column drifts or a recommendation proxy crosses its bound."""
    drifted = {column: score for column, score in scores.items()
               if column in params.drift and score >= params.drift[column].threshold}
    reasons = [f"drift: {column} score {score:.3f} >= {params.drift[column].threshold}"
               for column, score in sorted(drifted.items())]
    # feedback_lists counts settled lists only (feedback_quality): young ones cannot have their clicks yet
    if proxies.get("feedback_lists", 0) >= params.min_feedback_lists:
        bounds = (("ctr", "<", params.min_ctr), ("coverage", "<", params.min_coverage),
                  ("popularity_bias", ">", params.max_popularity_bias))
        for name, side, bound in bounds:
            value = proxies[name]
            if (value < bound) if side == "<" else (value > bound):
                reasons.append(f"quality: {name} {value:.3f} {side} {bound}")
    return {"retrain": bool(reasons), "reasons": reasons, "drifted": sorted(drifted),
            "scores": {column: round(score, 4) for column, score in sorted(scores.items())}}


# --------------------------------------------------------------------------------------------
# The monitoring run: reports, snapshots, decision
# --------------------------------------------------------------------------------------------


def _save_reports(reference: dict, current: dict, checks: dict[str, DriftCheck], out_dir: Path) -> dict[str, float]:
    scores = {}
    for name in ("events", "queries"):
        if not (len(reference[name]) and len(current[name])):
            continue
        snapshot = drift_report(reference[name], current[name], name, checks, with_summary=True)
        snapshot.save_html(str(out_dir / f"{name}.html"))
        snapshot.save_json(str(out_dir / f"{name}.json"))
        scores.update(drift_scores(snapshot))
    return scores


def run_monitor(settings: Settings, root: Path = Path("."), reference: Path | None = None,
                current: Path | None = None, feedback: Path | None = None, out: Path | None = None) -> dict:
    """Compare the latest window with the reference, save reports under out/<UTC stamp>/ and the decision."""
    params = settings.monitor
    root = Path(root)
    reference_tables = read_reference(reference or root / params.reference)
    current_tables = read_current(current or root / params.current)
    now = datetime.now(timezone.utc)
    if params.stream_sink and (root / params.stream_sink).is_dir():  # the live events not ingested yet
        live = recent_sink_events(root / params.stream_sink, now - pd.Timedelta(days=params.window_days))
        log.info("monitoring the stream sink's recent events", extra={"sink": params.stream_sink, "events": len(live)})
        current_tables["events"] = pd.concat([current_tables["events"], live], ignore_index=True) \
            .drop_duplicates("event_id", keep="last")
    current_tables["events"] = latest_window(current_tables["events"], params.window_days)
    current_tables["queries"] = latest_window(current_tables["queries"], params.window_days)
    vocabulary = catalog_vocabulary(reference_tables["catalog"])
    reference_frames = monitoring_frames(reference_tables, vocabulary)
    current_frames = monitoring_frames(current_tables, vocabulary)

    reports = Path(out or root / params.reports)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    run_dir = reports / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    scores = _save_reports(reference_frames, current_frames, params.drift, run_dir)

    popularity = Counter(reference_tables["events"]["item_id"].dropna())
    proxies = feedback_quality(feedback or root / params.feedback, dict(popularity), len(current_tables["catalog"]),
                               params, now)
    decision = {"time": stamp, **decide(scores, proxies, params), "quality": proxies,
                "rows": {name: {"reference": len(reference_frames[name]), "current": len(current_frames[name])}
                         for name in ("events", "queries")},
                "reports": str(run_dir)}
    (run_dir / "decision.json").write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    (reports / "latest.json").write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    with (reports / "decisions.jsonl").open("a", encoding="utf-8") as history:
        history.write(json.dumps(decision) + "\n")
    log.info("monitor decision", extra={"retrain": decision["retrain"], "reasons": decision["reasons"],
                                        "reports": str(run_dir)})
    return decision


# --------------------------------------------------------------------------------------------
# Drift bench: seeded stable windows and windows with one injected shift
# --------------------------------------------------------------------------------------------


