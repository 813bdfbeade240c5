"""Fuse: fit the fusions of each task on the validation split, with the components fitted on train.

For search and for recommendation: candidates pooled from the task's components, scored by each,
then a weighted fusion (weights fitted by k-fold cross-validation) and a LambdaRank stack fitted
on those validation requests. Test requests are never read here.
Writes models/fusion/<task>/weighted.json (weights a person can read) and lambdarank/.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import fusion, ranking
from pipelines.config import Settings, section
from pipelines.features import recommend_requests, search_requests
from pipelines.logs import get_logger
from pipelines.recall import RankingParams, load_components, ranking_params

log = get_logger(__name__)

TASKS = ("search", "recommend")
WEIGHTED_FILE = "weighted.json"
LAMBDARANK_DIR = "lambdarank"


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


def task_data(task: str, split: str, features_dir: Path, components: dict, params: RankingParams) -> TaskData:
    build = search_requests if task == "search" else recommend_requests
    requests, gains = build(features_dir, split)
    # Recommendations leave out what the user already has; a search may show it again.
    candidates = ranking.pool_candidates(components, requests, params.candidates_per_component,
                                         exclude_history=task == "recommend")
    return TaskData(requests, gains, candidates, ranking.candidate_scores(components, requests, candidates))


def fit_fusion(features_dir: Path, recall_dir: Path, out_dir: Path, settings: Settings) -> dict:
    params = ranking_params(settings)
    fusion_params = section(settings, "fusion", fusion.FusionParams)
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    summary = {}
    for task in TASKS:
        components = load_components(recall_dir, task_components(task, params))
        valid = task_data(task, "valid", features_dir, components, params)
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
        summary[task] = {"requests": len(valid.requests), "weights": weighted.weights,
                         "normalization": weighted.normalization}
        log.info("fusion fitted", extra={"task": task, **summary[task]})
    return summary


def load_fusions(fusion_dir: Path, task: str) -> tuple[fusion.WeightedFusion, fusion.LambdaRankFusion]:
    folder = Path(fusion_dir) / task
    weighted = fusion.WeightedFusion.from_dict(json.loads((folder / WEIGHTED_FILE).read_text(encoding="utf-8")))
    return weighted, fusion.LambdaRankFusion.load(folder / LAMBDARANK_DIR)
