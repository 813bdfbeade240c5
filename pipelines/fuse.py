"""Fuse: fit the fusions of each task on the validation split, with the components fitted on train.

For search and for recommendation: candidates pooled from the task's components, scored by each,
then a weighted fusion (weights fitted by k-fold cross-validation) and a LambdaRank stack fitted
on those validation requests. Test requests are never read here.
Writes models/fusion/<task>/weighted.json (weights a person can read) and lambdarank/; with a
search re-ranker (ranking.search_reranker), search/<fusion>+<reranker>.json: the fitted blend of each
fusion's score and the re-ranker's over the fusion's top rerank_depth.
A task whose validation split has no requests (a shop without behaviour events has no recommend
requests) is skipped: no folder for it, a warning, and {"requests": 0, "skipped": reason} in the
summary; the evaluate stage skips it too and the service answers it with its popularity fallback.
No requests for any task is a DataError naming the features folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import fusion, ranking
from pipelines.config import Settings, section
from pipelines.errors import DataError
from pipelines.features import POSITIVE_EVENTS, recommend_requests, search_requests
from pipelines.logs import get_logger
from pipelines.recall import RankingParams, load_components, ranking_params

log = get_logger(__name__)

TASKS = ("search", "recommend")
WEIGHTED_FILE = "weighted.json"
LAMBDARANK_DIR = "lambdarank"
RERANKED_FUSIONS = ("weighted", "lambdarank")  # stage ones whose top the search re-ranker re-orders
STAGE_ONE = "stage_one"


def reranked_file(stage_one: str, reranker: str) -> str:
    return f"{stage_one}+{reranker}.json"


@dataclass
class TaskData:
    """One task's requests of one split, pooled and scored by its components."""

    requests: list
    gains: list[dict[int, float]]
    candidates: np.ndarray
    scores: dict[str, np.ndarray]

    @property
    def gain_matrix(self) -> np.ndarray:
        return ranking.gain_matrix(self.candidates, self.gains)


def task_components(task: str, params: RankingParams) -> list[str]:
    return params.search_components if task == "search" else params.recommend_components


def task_requests(task: str, split: str, features_dir: Path) -> tuple[list, list[dict[int, float]]]:
    """The task's requests of the split and their gains (features.search_requests / recommend_requests)."""
    build = search_requests if task == "search" else recommend_requests
    return build(features_dir, split)


def no_requests_reason(task: str, split: str, features_dir: Path) -> str:
    """Why a task has nothing to fit or evaluate on, for logs, summaries and metrics."""
    what = ("no judged search query" if task == "search" else
            f"no recommend request (no user with a new {'/'.join(POSITIVE_EVENTS)} event)")
    return f"{what} in the {split} split of {features_dir}"


def has_fusion(fusion_dir: Path, task: str) -> bool:
    """Whether the fuse stage fitted this task (a task without validation requests has no folder)."""
    return (Path(fusion_dir) / task / WEIGHTED_FILE).is_file()


def task_data(task: str, split: str, features_dir: Path, components: dict, params: RankingParams,
              requests: tuple[list, list[dict[int, float]]] | None = None) -> TaskData:
    """requests: the split's (requests, gains) when the caller has read them already."""
    requests, gains = requests if requests is not None else task_requests(task, split, features_dir)
    # Recommendations leave out what the user already has; a search may show it again.
    candidates = ranking.pool_candidates(components, requests, params.candidates_per_component,
                                         exclude_history=task == "recommend")
    return TaskData(requests, gains, candidates, ranking.candidate_scores(components, requests, candidates))


def fit_fusion(features_dir: Path, recall_dir: Path, out_dir: Path, settings: Settings) -> dict:
    params = ranking_params(settings)
    fusion_params = section(settings, "fusion", fusion.FusionParams)
    out_dir = Path(out_dir)
    requests = {task: task_requests(task, "valid", features_dir) for task in TASKS}
    skipped = {task: no_requests_reason(task, "valid", features_dir) for task in TASKS if not requests[task][0]}
    if len(skipped) == len(TASKS):
        raise DataError(f"{features_dir}: no task has requests in the valid split to fit a fusion on "
                        f"({'; '.join(skipped.values())})")
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = {}
    for task in TASKS:
        if task in skipped:
            summary[task] = {"requests": 0, "skipped": skipped[task]}
            log.warning("fusion skipped", extra={"task": task, "reason": skipped[task]})
            continue
        components = load_components(recall_dir, task_components(task, params))
        valid = task_data(task, "valid", features_dir, components, params, requests[task])
        gains = valid.gain_matrix
        weighted = fusion.WeightedFusion.from_params(fusion_params).fit(
            valid.scores, gains, folds=fusion_params.folds, seed=settings.features.seed, metric_k=fusion_params.metric_k)
        features, names = ranking.stacking_features(valid.scores)
        stacked = fusion.LambdaRankFusion(fusion_params.lambdarank, fusion_params.metric_k).fit(
            features, names, gains, seed=settings.features.seed)
        folder = out_dir / task
        folder.mkdir(parents=True)
        (folder / WEIGHTED_FILE).write_text(json.dumps(weighted.to_dict(), indent=2) + "\n", encoding="utf-8")
        stacked.save(folder / LAMBDARANK_DIR)
        if task == "search" and params.search_reranker:
            stage_ones = {"weighted": weighted.score(valid.scores), "lambdarank": stacked.score(features)}
            for name, blend in fit_rerank_blends(valid, stage_ones, recall_dir, params, fusion_params,
                                                 settings.features.seed).items():
                (folder / reranked_file(name, params.search_reranker)).write_text(
                    json.dumps(blend.to_dict(), indent=2) + "\n", encoding="utf-8")
        summary[task] = {"requests": len(valid.requests), "weights": weighted.weights,
                         "normalization": weighted.normalization}
        log.info("fusion fitted", extra={"task": task, **summary[task]})
    return summary


def top_slice(task_data_: TaskData, stage_one: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item positions, stage-one scores and column indices of each request's stage-one top `depth`."""
    top = ranking.stage_one_order(stage_one, task_data_.candidates)[:, :depth]
    return (np.take_along_axis(task_data_.candidates, top, axis=1),
            np.take_along_axis(np.asarray(stage_one, dtype=np.float64), top, axis=1), top)


def rerank_scores(reranker, task_data_: TaskData, items: np.ndarray) -> np.ndarray:
    padding = items == ranking.PADDING
    scores = reranker.score(task_data_.requests, np.where(padding, 0, items))
    return np.where(padding, -np.inf, np.asarray(scores, dtype=np.float64))


def fit_rerank_blends(valid: TaskData, stage_ones: dict[str, np.ndarray], recall_dir: Path, params: RankingParams,
                      fusion_params: fusion.FusionParams, seed: int) -> dict[str, fusion.WeightedFusion]:
    """Per stage one: a weighted fusion of its score and the re-ranker's over its top rerank_depth, fitted on
    the validation requests (a weak re-ranker gets a small weight instead of scrambling a good top)."""
    reranker = load_components(recall_dir, [params.search_reranker])[params.search_reranker]
    blends = {}
    for name, stage_one in stage_ones.items():
        items, top_scores, top = top_slice(valid, stage_one, reranker.params.rerank_depth)
        gains = np.take_along_axis(valid.gain_matrix, top, axis=1)
        components = {STAGE_ONE: top_scores, reranker.name: rerank_scores(reranker, valid, items)}
        blends[name] = fusion.WeightedFusion.from_params(fusion_params).fit(
            components, gains, folds=fusion_params.folds, seed=seed, metric_k=fusion_params.metric_k)
    return blends


def load_rerank_blend(fusion_dir: Path, task: str, stage_one: str, reranker: str) -> fusion.WeightedFusion:
    path = Path(fusion_dir) / task / reranked_file(stage_one, reranker)
    return fusion.WeightedFusion.from_dict(json.loads(path.read_text(encoding="utf-8")))


def load_fusions(fusion_dir: Path, task: str) -> tuple[fusion.WeightedFusion, fusion.LambdaRankFusion]:
    folder = Path(fusion_dir) / task
    weighted = fusion.WeightedFusion.from_dict(json.loads((folder / WEIGHTED_FILE).read_text(encoding="utf-8")))
    return weighted, fusion.LambdaRankFusion.load(folder / LAMBDARANK_DIR)
