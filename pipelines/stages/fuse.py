"""Fuse: fit the fusions of each task on the validation split, with the components fitted on train.

For search and for recommendation: candidates pooled from the task's components, scored by each,
then a weighted fusion (weights fitted by k-fold cross-validation) and a LambdaRank stack fitted
on those validation requests. Test requests are never read here.
Writes models/fusion/<task>/weighted.json (weights a person can read), lambdarank/ and served.json (the
fusion the service orders the task's lists with: serving.fusion's, or with `auto` the one of the two with the
higher cross-validated NDCG, both CV figures recorded); for search
also title_match.joblib (the stack's title features, ranking.title_features), for recommend
history_match.joblib (the stack's history and item-activity features, ranking.history_features), and relevance/ (the
graded relevance of a (query, item) pair, fitted on the validation split's judged pairs); with a
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
from pathlib import Path

import numpy as np

from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.data.dataset import load_items, load_training_data
from pipelines.ranking import fusion
from pipelines.ranking.history_match import HistoryMatcher
from pipelines.ranking.params import RankingParams, load_components
from pipelines.ranking.tasks import (
    LAMBDARANK_DIR,
    RELEVANCE_DIR,
    STAGE_ONE,
    TASKS,
    WEIGHTED_FILE,
    Matcher,
    RerankScores,
    TaskData,
    judged_pairs,
    no_requests_reason,
    reranked_file,
    save_served,
    stack_inputs,
    task_components,
    task_data,
    task_requests,
    top_slice,
    with_judged,
)
from pipelines.ranking.text_match import TitleMatcher

log = get_logger(__name__)


def fit_relevance(valid: TaskData, components: dict, matcher, fusion_params: fusion.FusionParams,
                  seed: int) -> fusion.RelevanceModel:
    """The graded relevance of the validation split's judged pairs from the stack's features of each pair."""
    judged = with_judged(valid, components)
    features, names = stack_inputs(judged, matcher)
    table, grades = judged_pairs(judged, features)
    return fusion.RelevanceModel(fusion_params.relevance).fit(table.reshape(len(grades), -1), names, grades, seed)


def fit_matcher(task: str, features_dir: Path, settings: Settings) -> Matcher | None:
    """The task's extra stack features: title matches for search, history relations and item activity for
    recommend (fitted on the train split's interactions only)."""
    params = settings.ranking
    if task == "search" and params.title_features:
        return TitleMatcher(load_items(features_dir).titles, settings.text.spelling)
    if task == "recommend" and params.history_features:
        data = load_training_data(features_dir, ("train",))
        return HistoryMatcher(data.interactions, len(data.items))
    return None


def fit_fusion(features_dir: Path, recall_dir: Path, out_dir: Path, settings: Settings) -> dict:
    params = settings.ranking
    fusion_params = settings.fusion
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
        folder = out_dir / task
        folder.mkdir(parents=True)
        matcher = fit_matcher(task, features_dir, settings)
        if matcher is not None:
            matcher.save(folder)
        features, names = stack_inputs(valid, matcher)
        stacked = fusion.LambdaRankFusion(fusion_params.lambdarank, fusion_params.metric_k).fit(
            features, names, gains, seed=settings.features.seed)
        if task == "search":
            fit_relevance(valid, components, matcher, fusion_params, settings.features.seed).save(folder / RELEVANCE_DIR)
        (folder / WEIGHTED_FILE).write_text(json.dumps(weighted.to_dict(), indent=2) + "\n", encoding="utf-8")
        stacked.save(folder / LAMBDARANK_DIR)
        served = save_served(folder, settings.serving.fusion.get(task, "auto"), weighted, stacked)
        if task == "search" and params.search_reranker:
            stage_ones = {"weighted": weighted.score(valid.scores), "lambdarank": stacked.score(features)}
            for name, blend in fit_rerank_blends(valid, stage_ones, recall_dir, params, fusion_params,
                                                 settings.features.seed).items():
                (folder / reranked_file(name, params.search_reranker)).write_text(
                    json.dumps(blend.to_dict(), indent=2) + "\n", encoding="utf-8")
        summary[task] = {"requests": len(valid.requests), "weights": weighted.weights,
                         "normalization": weighted.normalization, "served": served,
                         "cv_ndcg": {"weighted": weighted.cv_ndcg, "lambdarank": stacked.cv_ndcg}}
        log.info("fusion fitted", extra={"task": task, **summary[task]})
    return summary


def fit_rerank_blends(valid: TaskData, stage_ones: dict[str, np.ndarray], recall_dir: Path, params: RankingParams,
                      fusion_params: fusion.FusionParams, seed: int) -> dict[str, fusion.WeightedFusion]:
    """Per stage one: a weighted fusion of its score and the re-ranker's over its top rerank_depth, fitted on
    the validation requests (a weak re-ranker gets a small weight instead of scrambling a good top)."""
    reranker = load_components(recall_dir, [params.search_reranker])[params.search_reranker]
    blends, rerank_scores = {}, RerankScores(reranker, valid.requests)
    for name, stage_one in stage_ones.items():
        items, top_scores, top = top_slice(valid, stage_one, params.rerank_depth)
        gains = np.take_along_axis(valid.gain_matrix, top, axis=1)
        components = {STAGE_ONE: top_scores, reranker.name: rerank_scores(items)}
        blends[name] = fusion.WeightedFusion.from_params(fusion_params).fit(
            components, gains, folds=fusion_params.folds, seed=seed, metric_k=fusion_params.metric_k)
    return blends


