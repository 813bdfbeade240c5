"""Recommendation benchmark on a ReChorus-layout folder (e.g. Amazon Office).

Protocol: every test row ranks its positive among its given negatives (99 on Office); the history
is the user's train and dev interactions, oldest first. Components are fitted twice:
- phase "fusion-train": on train interactions only, scoring the dev rows (history = train) -- the
  requests every fusion is fitted on (weights by cross-validation, LambdaRank with a validation
  split carved from them);
- phase "test": on train + dev interactions, scoring the test rows.
No test row reaches any fit: the test rows are read only to build the requests that are scored.
Candidates are shuffled per request (seeded) so that ties never favour the positive.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.bench import BenchResult, report
from pipelines.core import metrics
from pipelines.core.config import Settings, section
from pipelines.core.items import Items, Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.data.sources import rechorus
from pipelines.models.rankers.base import Ranker
from pipelines.models.rankers.relations import Relations
from pipelines.ranking.fusion import (
    FusionParams,
    LambdaRankFusion,
    WeightedFusion,
    normalize_scores,
    ranks,
    rrf,
)

log = get_logger(__name__)

PROTOCOL = "rank each test positive among its given negatives; history = train + dev; fit on train + dev"
COMPONENTS = ("popularity", "itemcf", "relations", "dense", "sasrec")


class RecommendBenchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    components: list[str] = list(COMPONENTS)
    rrf_components: list[str] = list(COMPONENTS)  # those present are fused by RRF
    dense_field: str = "titles"  # the Items field MiniLM reads (Office's category/brand are opaque codes)
    text_history_items: int = Field(10, ge=1)  # history items the text-similarity features look at
    recent_days: float = Field(180.0, gt=0)  # window of the recent-popularity feature
    last_train_requests: bool = True  # also train the fusions on each user's last train item
    sasrec_epochs: int | None = Field(None, ge=1)  # null: the sasrec section's own value
    metric_k: int = Field(10, ge=1)


@dataclass
class Dataset:
    items: Items
    events: pd.DataFrame  # user, item (position), timestamp, split; oldest first per user
    holdout: pd.DataFrame  # user, item, split, negatives (array of positions)
    relations: pd.DataFrame | None  # item, related_item, relation (positions)
    name: str = ""


@dataclass
class Phase:
    """One set of requests with their candidates, and the components fitted to score them."""

    requests: list[Request]
    candidates: np.ndarray  # [n_requests, n_candidates] item positions
    gains: np.ndarray  # 1 at the positive
    interactions: pd.DataFrame  # what the components were fitted on
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None
    feature_names: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- loading

def load(path: Path, work_dir: Path) -> Dataset:
    """The folder through the rechorus adapter, mapped to item positions."""
    rechorus.convert(Path(path), work_dir)
    catalog = pd.read_csv(work_dir / "catalog.csv", dtype=str, keep_default_na=False)
    catalog["price"] = pd.to_numeric(catalog["price"], errors="coerce")  # empty in this layout
    items = Items.from_catalog(catalog)
    events = pd.read_csv(work_dir / "events.csv", dtype=str, keep_default_na=False)
    events = pd.DataFrame({
        "user": events["user_id"], "item": events["item_id"].map(items.position),
        "timestamp": events["timestamp"], "split": events["event_id"].str.split("-").str[0],
    }).dropna(subset=["item"])
    events["item"] = events["item"].astype(np.int64)
    events = events.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    holdout = pd.read_csv(work_dir / "holdout.csv", dtype=str, keep_default_na=False)
    holdout = pd.DataFrame({
        "user": holdout["user_id"], "item": holdout["item_id"].map(items.position), "split": holdout["split"],
        "negatives": [items.positions(ids.split()) for ids in holdout["neg_items"]],
    }).dropna(subset=["item"])
    holdout["item"] = holdout["item"].astype(np.int64)
    relations = None
    if (work_dir / "relations.csv").exists():
        raw = pd.read_csv(work_dir / "relations.csv", dtype=str, keep_default_na=False)
        relations = pd.DataFrame({"item": raw["item_id"].map(items.position),
                                  "related_item": raw["related_item_id"].map(items.position),
                                  "relation": raw["relation"]}).dropna().astype({"item": np.int64, "related_item": np.int64})
    name = next(Path(path).glob("*.item2index")).stem
    return Dataset(items, events, holdout, relations, name)


def histories(interactions: pd.DataFrame) -> dict[str, tuple[int, ...]]:
    return {user: tuple(group.tolist()) for user, group in interactions.groupby("user", sort=False)["item"]}


def build_phase(rows: pd.DataFrame, interactions: pd.DataFrame, seed: int) -> Phase:
    """Requests for holdout rows: the positive and its negatives, shuffled per request."""
    history_of = histories(interactions)
    rng = np.random.default_rng(seed)
    width = max(1 + len(negatives) for negatives in rows["negatives"])
    candidates = np.empty((len(rows), width), dtype=np.int64)
    gains = np.zeros((len(rows), width))
    requests = []
    for row, (user, positive, negatives) in enumerate(zip(rows["user"], rows["item"], rows["negatives"])):
        # a row with fewer negatives than the widest repeats its own negatives (never the case on Office)
        listed = np.concatenate([[positive], np.resize(negatives, width - 1) if len(negatives) else
                                 np.full(width - 1, positive)])
        order = rng.permutation(width)
        candidates[row] = listed[order]
        gains[row, np.flatnonzero(order == 0)] = 1.0
        requests.append(Request(history=history_of.get(user, ()), user=None))
    return Phase(requests, candidates, gains, interactions)


# ---------------------------------------------------------------- components

def make_components(names: Sequence[str], settings: Settings, params: RecommendBenchParams, work_dir: Path):
    """Fresh, unfitted components by name; one whose module is missing is skipped with a warning."""
    made: dict[str, Ranker] = {}
    for name in names:
        try:
            made[name] = _make(name, settings, params, work_dir)
        except ImportError as error:
            log.warning("component skipped: module missing", extra={"component": name, "error": str(error)})
    return made


def _make(name: str, settings: Settings, params: RecommendBenchParams, work_dir: Path) -> Ranker:
    if name == "popularity":
        from pipelines.models.rankers.popularity import Popularity

        return Popularity.from_settings(settings)
    if name == "itemcf":
        from pipelines.models.rankers.itemcf import ItemCF

        return ItemCF.from_settings(settings)
    if name == "relations":
        return Relations.from_settings(settings)
    if name == "dense":
        from pipelines.models.rankers.dense import DenseRetriever, dense_params

        # model_path None: the raw packaged MiniLM, not the sample pipeline's fine-tuned text.dense.model_path
        return DenseRetriever(dense_params(settings).model_copy(update={"field": params.dense_field,
                                                                        "model_path": None}))
    if name == "sasrec":
        from pipelines.models.rankers.sasrec import SASRec

        sasrec = SASRec.from_settings(settings)
        update = {"checkpoint_dir": str(work_dir / "sasrec_checkpoints" / str(time.time_ns()))}
        if params.sasrec_epochs:
            update["epochs"] = params.sasrec_epochs
        sasrec.params = sasrec.params.model_copy(update=update)
        return sasrec
    raise ValueError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")


# Components that learn nothing from interactions are fitted once and shared by all phases.
CONTENT_ONLY = ("relations", "dense")


def fit_components(dataset: Dataset, phase: Phase, settings: Settings, params: RecommendBenchParams,
                   work_dir: Path, shared: dict[str, Ranker], progress: Progress, label: str) -> dict[str, Ranker]:
    data = TrainingData(dataset.items, interactions=phase.interactions, relations=dataset.relations)
    fitted: dict[str, Ranker] = {}
    for name, component in make_components(params.components, settings, params, work_dir).items():
        task = progress.add_task(f"{label}: fit {name}", total=None)
        started = time.perf_counter()
        if name in CONTENT_ONLY and name in shared:
            fitted[name] = shared[name]
        else:
            fitted[name] = component.fit(data)
            if name in CONTENT_ONLY:
                shared[name] = fitted[name]
        progress.update(task, total=1, completed=1)
        log.info("component ready", extra={"phase": label, "component": name,
                                           "seconds": round(time.perf_counter() - started, 1)})
    return fitted


def score_components(components: dict[str, Ranker], phase: Phase) -> dict[str, np.ndarray]:
    return {name: np.asarray(component.score(phase.requests, phase.candidates), dtype=np.float64)
            for name, component in components.items()}


# ---------------------------------------------------------------- features for the learned fusion

def build_features(phase: Phase, components: dict[str, Ranker], n_items: int,
                   params: RecommendBenchParams) -> tuple[np.ndarray, list[str]]:
    """[n_requests, n_candidates, n_features]: every component's score, z-score and rank; popularity;
    relations to the whole history and to the last item per kind; text similarity; repeat flags."""
    columns: dict[str, np.ndarray] = {}
    width = phase.candidates.shape[1]
    for name, scores in sorted(phase.scores.items()):
        columns[f"{name}_score"] = scores
        columns[f"{name}_z"] = normalize_scores(scores, "zscore")
        columns[f"{name}_rank"] = ranks(scores) / width
    columns.update(_item_features(phase, n_items, params.recent_days))
    if "itemcf" in components:
        columns["itemcf_last"] = _last_item_similarity(components["itemcf"].similarity, phase)
    if "relations" in components:
        columns.update(_relation_features(components["relations"], phase))
    if "dense" in components:
        columns.update(_text_features(components["dense"].item_embeddings, phase, params.text_history_items))
    columns.update(_history_features(phase))
    names = list(columns)
    return np.stack([columns[name].astype(np.float32) for name in names], axis=-1), names


def _item_features(phase: Phase, n_items: int, recent_days: float) -> dict[str, np.ndarray]:
    """Popularity overall and lately, and how long ago each item was first and last bought, all
    measured against the newest interaction the components were fitted on."""
    items = phase.interactions["item"].to_numpy(np.int64)
    moments = pd.to_datetime(phase.interactions["timestamp"], utc=True)
    age_days = ((moments.max() - moments).dt.total_seconds() / 86400.0).to_numpy()
    never = float(age_days.max()) + 1.0 if len(age_days) else 1.0  # unseen items: older than anything
    last_seen = np.full(n_items, never)
    np.minimum.at(last_seen, items, age_days)
    first_seen = np.full(n_items, -np.inf)
    np.maximum.at(first_seen, items, age_days)
    first_seen[np.isinf(first_seen)] = never
    overall = np.bincount(items, minlength=n_items)
    recent = np.bincount(items[age_days <= recent_days], minlength=n_items)
    pick = phase.candidates
    return {"log_popularity": np.log1p(overall[pick]), "log_recent_popularity": np.log1p(recent[pick]),
            "days_since_first": first_seen[pick], "days_since_last": last_seen[pick]}


def _last_item_similarity(similarity, phase: Phase) -> np.ndarray:
    """Item-CF similarity of each candidate to the request's last history item alone."""
    out = np.zeros(phase.candidates.shape)
    for row, request in enumerate(phase.requests):
        if request.history:
            out[row] = similarity[request.history[-1]].toarray()[0, phase.candidates[row]]
    return out


def _relation_features(relations: Relations, phase: Phase) -> dict[str, np.ndarray]:
    last_only = Relations(relations.params.model_copy(update={"history_items": 1}))
    last_only.matrices, last_only.n_items = relations.matrices, relations.n_items
    whole = relations.kind_scores(phase.requests, phase.candidates)
    last = last_only.kind_scores(phase.requests, phase.candidates)
    return {**{f"rel_{kind}": values for kind, values in whole.items()},
            **{f"rel_{kind}_last": values for kind, values in last.items()}}


def _text_features(embeddings: np.ndarray, phase: Phase, history_items: int) -> dict[str, np.ndarray]:
    """Cosine of each candidate to the last history item, and the max and mean over the latest ones."""
    shape = phase.candidates.shape
    last_sim, max_sim, mean_sim = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for row, request in enumerate(phase.requests):
        latest = np.asarray(request.history[-history_items:], dtype=np.int64)
        if not len(latest):
            continue
        similarity = embeddings[phase.candidates[row]] @ embeddings[latest].T  # candidates x latest
        last_sim[row], max_sim[row], mean_sim[row] = similarity[:, -1], similarity.max(1), similarity.mean(1)
    return {"text_sim_last": last_sim, "text_sim_max": max_sim, "text_sim_mean": mean_sim}


def _history_features(phase: Phase) -> dict[str, np.ndarray]:
    in_history = np.zeros(phase.candidates.shape)
    length = np.zeros(phase.candidates.shape)
    for row, request in enumerate(phase.requests):
        seen = set(request.history)
        in_history[row] = [item in seen for item in phase.candidates[row]]
        length[row] = len(request.history)
    return {"in_history": in_history, "history_length": np.log1p(length)}


# ---------------------------------------------------------------- evaluation

def evaluate(scores: np.ndarray, phase: Phase, popularity: dict[int, float], n_items: int, k: int) -> dict[str, float]:
    """HR@k, NDCG@k, MRR over the candidate lists; coverage and popularity bias of the top-k items."""
    values = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-values, axis=1, kind="stable")
    rankings = [row.tolist() for row in order]
    judgments = [{int(c): 1.0 for c in np.flatnonzero(gains > 0)} for gains in phase.gains]
    result = metrics.ranking_report(rankings, judgments, ks=(k,), recall_k=k)
    result.pop(f"recall@{k}")  # equals HR@k with one positive
    top_items = [phase.candidates[row, order[row, :k]].tolist() for row in range(len(order))]
    result["coverage@10" if k == 10 else f"coverage@{k}"] = metrics.catalog_coverage(top_items, n_items)
    result["popularity_bias"] = metrics.popularity_bias(top_items, popularity)
    return result


# ---------------------------------------------------------------- the run

def run(path: Path, json_out: Path | None, settings: Settings) -> dict:
    params = section(settings, "bench_recommend", RecommendBenchParams)
    fusion_params = section(settings, "fusion", FusionParams)
    result = BenchResult(dataset="", protocol=PROTOCOL)
    with tempfile.TemporaryDirectory(prefix="bench_recommend_") as tmp, _progress() as progress:
        work_dir = Path(tmp)
        dataset = load(path, work_dir)
        result.dataset = dataset.name
        fit_phase, test_phase, _ = build_phases(dataset, settings, params, work_dir, progress)

    popularity = dict(enumerate(np.bincount(test_phase.interactions["item"].to_numpy(np.int64),
                                            minlength=len(dataset.items)).astype(float)))
    n_items = len(dataset.items)

    def add(name: str, kind: str, scores: np.ndarray) -> None:
        result.add(name, kind, evaluate(scores, test_phase, popularity, n_items, params.metric_k))

    for name, scores in test_phase.scores.items():
        add(name, "component", scores)
    fused_names = [name for name in params.rrf_components if name in test_phase.scores]
    add("rrf", "fusion", rrf({name: test_phase.scores[name] for name in fused_names}, fusion_params.rrf_k))

    weighted = WeightedFusion.from_params(fusion_params).fit(fit_phase.scores, fit_phase.gains, folds=fusion_params.folds,
                                                             seed=params.seed, metric_k=fusion_params.metric_k)
    add("weighted", "fusion", weighted.score(test_phase.scores))

    lambdarank = LambdaRankFusion(fusion_params.lambdarank, fusion_params.metric_k)
    lambdarank.fit(fit_phase.features, fit_phase.feature_names, fit_phase.gains, seed=params.seed)
    add("lambdarank", "fusion", lambdarank.score(test_phase.features))

    result.extra = _extra(dataset, fit_phase, test_phase, weighted, lambdarank, fused_names, result)
    return report(result, json_out)


def build_phases(dataset: Dataset, settings: Settings, params: RecommendBenchParams, work_dir: Path,
                 progress: Progress) -> tuple[Phase, Phase, dict[str, dict[str, Ranker]]]:
    """The fusion-training requests (dev rows scored by components fitted on train; with
    `last_train_requests` also each user's last train item scored by components fitted on the train
    before it) and the test phase (test rows, components fitted on train + dev), each scored and
    featurized; plus the fitted components of each phase."""
    train = dataset.events[dataset.events["split"] == "train"]
    train_dev = dataset.events[dataset.events["split"].isin(["train", "dev"])]
    holdout = dataset.holdout
    dev_rows = holdout[holdout["split"] == "dev"]
    phases = {"fusion-train": build_phase(dev_rows, train, params.seed)}
    if params.last_train_requests:
        width = int(np.median([len(negatives) for negatives in dev_rows["negatives"]]))
        rows, earlier = last_train_rows(train, width, len(dataset.items), params.seed)
        phases["fusion-train-last"] = build_phase(rows, earlier, params.seed + 2)
    phases["test"] = build_phase(holdout[holdout["split"] == "test"], train_dev, params.seed + 1)
    shared: dict[str, Ranker] = {}
    fitted = {}
    for label, phase in phases.items():
        components = fit_components(dataset, phase, settings, params, work_dir, shared, progress, label)
        phase.scores = score_components(components, phase)
        phase.features, phase.feature_names = build_features(phase, components, len(dataset.items), params)
        fitted[label] = components
    fit_phase = concat_phases([phase for label, phase in phases.items() if label != "test"])
    return fit_phase, phases["test"], fitted


def last_train_rows(train: pd.DataFrame, n_negatives: int, n_items: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's last train interaction as a holdout-like row with negatives drawn uniformly from
    the items that user never met in train (as the given negatives were drawn), and the train
    interactions before it."""
    last = train.groupby("user", sort=False).tail(1)
    earlier = train.drop(last.index)
    last = last[last["user"].isin(set(earlier["user"]))]
    seen = train.groupby("user", sort=False)["item"].agg(set)
    rng = np.random.default_rng(seed)
    negatives = []
    for user in last["user"]:
        allowed = np.setdiff1d(np.arange(n_items), np.fromiter(seen[user], dtype=np.int64))
        negatives.append(rng.choice(allowed, n_negatives, replace=len(allowed) < n_negatives))
    return pd.DataFrame({"user": last["user"].to_numpy(), "item": last["item"].to_numpy(), "negatives": negatives}), earlier


def concat_phases(phases: list[Phase]) -> Phase:
    """Several sets of training requests as one (same components, same candidate count)."""
    if len(phases) == 1:
        return phases[0]
    first = phases[0]
    return Phase(
        requests=[request for phase in phases for request in phase.requests],
        candidates=np.vstack([phase.candidates for phase in phases]),
        gains=np.vstack([phase.gains for phase in phases]),
        interactions=first.interactions,
        scores={name: np.vstack([phase.scores[name] for phase in phases]) for name in first.scores},
        features=np.concatenate([phase.features for phase in phases]),
        feature_names=first.feature_names,
    )


def _extra(dataset, fit_phase, test_phase, weighted, lambdarank, fused_names, result) -> dict:
    components = {n: m for n, m in result.methods.items() if m["kind"] == "component"}
    best_single = max(components, key=lambda n: components[n]["ndcg@10"]) if components else None
    fusions = {n: m for n, m in result.methods.items() if m["kind"] == "fusion"}
    best_fusion = max(fusions, key=lambda n: fusions[n]["ndcg@10"]) if fusions else None
    return {
        "requests": {"fusion_train": len(fit_phase.requests), "test": len(test_phase.requests)},
        "candidates_per_request": int(test_phase.candidates.shape[1]),
        "items": len(dataset.items),
        "relations": 0 if dataset.relations is None else len(dataset.relations),
        "rrf_components": fused_names,
        "weighted_fusion": weighted.to_dict(),
        "lambdarank": {"best_iteration": lambdarank.best_iteration, "valid_ndcg@10": lambdarank.valid_ndcg,
                       "feature_importance_gain": lambdarank.feature_importance()},
        "best_single": best_single, "best_fusion": best_fusion,
        "fusion_over_best_single": round(fusions[best_fusion]["ndcg@10"] / max(components[best_single]["ndcg@10"], 1e-9), 4)
        if best_single and best_fusion else None,
    }


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
