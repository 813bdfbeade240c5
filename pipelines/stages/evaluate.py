"""Evaluate: every component and fusion on the held-out test split of each task.

Writes DVC metrics (metrics/evaluate.json: NDCG@10, HR@10, Recall@100, MRR per method and task, <task>.served:
the fusion the service orders the task's lists with (the fuse stage's served.json) and its figures, and
<task>.slices: each slice's request count and every method's NDCG@10 and HR@10 on it, pipelines/ranking/slices.py)
and a DVC plot (plots/ndcg_at_k.csv: NDCG@k for each k of ranking.eval_ks).
A task without test requests, or without a fitted fusion (the fuse stage skipped it), is skipped:
{"requests": <n>, "skipped": reason} and no method figures. Every task skipped is a DataError.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipelines.core import metrics
from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.ranking import fused, fusion
from pipelines.ranking.params import load_components
from pipelines.ranking.slices import task_slices
from pipelines.ranking.tasks import (
    RERANKED_FUSIONS,
    STAGE_ONE,
    TASKS,
    RerankScores,
    TaskData,
    has_fusion,
    judged_pairs,
    load_fusions,
    load_relevance,
    load_rerank_blend,
    load_served,
    load_matcher,
    no_requests_reason,
    stack_inputs,
    task_components,
    task_data,
    task_requests,
    with_judged,
)

log = get_logger(__name__)


def method_scores(task_data_, weighted, stacked, rrf_k: int, matcher) -> dict[str, tuple[str, np.ndarray]]:
    """(kind, candidate scores) of every method: each component alone and each fusion."""
    scores = {name: ("component", values) for name, values in task_data_.scores.items()}
    scores["rrf"] = ("fusion", fusion.rrf(task_data_.scores, rrf_k))
    scores["weighted"] = ("fusion", weighted.score(task_data_.scores))
    scores["lambdarank"] = ("fusion", stacked.score(stack_inputs(task_data_, matcher)[0]))
    return scores


def relevance_report(test: TaskData, components: dict, matcher, model) -> dict:
    """RMSE of the graded relevance model on the test split's judged pairs, next to predicting the mean
    grade of the pairs it learned from (what a model that knows nothing would say)."""
    judged = with_judged(test, components)
    table, grades = judged_pairs(judged, stack_inputs(judged, matcher)[0])
    predicted = model.predict(table.reshape(len(grades), -1))
    return {"kind": "relevance", "pairs": len(grades), "rmse": round(metrics.rmse(predicted, grades), 5),
            "rmse_predicting_mean": round(metrics.rmse(np.full(len(grades), model.mean_grade), grades), 5)}


def reranked_scores(task_data_, scores: dict, reranker, fusion_dir: Path, depth: int) -> dict[str, tuple[str, np.ndarray]]:
    """`<fusion>+<reranker>`: each fitted fusion's top rerank_depth re-ordered by its blend with the re-ranker."""
    methods, rerank_scores = {}, RerankScores(reranker, task_data_.requests)
    for name in RERANKED_FUSIONS:
        blend = load_rerank_blend(fusion_dir, "search", name, reranker.name)

        def score_top(items, top_scores, _blend=blend):
            return _blend.score({STAGE_ONE: top_scores, reranker.name: rerank_scores(items)})

        methods[f"{name}+{reranker.name}"] = ("fusion", fused.rerank_top(
            scores[name][1], task_data_.candidates, depth, score_top))
    return methods


def evaluate(features_dir: Path, recall_dir: Path, fusion_dir: Path, metrics_path: Path, plot_path: Path,
             settings: Settings) -> dict:
    params = settings.ranking
    rrf_k = settings.fusion.rrf_k
    results, curve = {}, []
    for task in TASKS:
        requests = task_requests(task, "test", features_dir)
        skipped = None
        if not requests[0]:
            skipped = no_requests_reason(task, "test", features_dir)
        elif not has_fusion(fusion_dir, task):
            skipped = f"no fitted fusion in {Path(fusion_dir) / task} (the fuse stage skipped the task)"
        if skipped:
            results[task] = {"requests": len(requests[0]), "skipped": skipped}
            log.warning("evaluation skipped", extra={"task": task, "reason": skipped})
            continue
        components = load_components(recall_dir, task_components(task, params))
        test = task_data(task, "test", features_dir, components, params, requests)
        weighted, stacked = load_fusions(fusion_dir, task)
        results[task] = {"requests": len(test.requests)}
        matcher = load_matcher(fusion_dir, task)
        scores_by_method = method_scores(test, weighted, stacked, rrf_k, matcher)
        if task == "search" and params.search_reranker:
            reranker = load_components(recall_dir, [params.search_reranker])[params.search_reranker]
            scores_by_method.update(reranked_scores(test, scores_by_method, reranker, fusion_dir, params.rerank_depth))
        slices = task_slices(task, test.requests, test.gains, features_dir, params.slices,
                             getattr(components.get("bm25"), "corrector", None))
        sliced = {name: {"requests": len(part.rows)} for name, part in slices.items()}
        for method, (kind, scores) in scores_by_method.items():
            ranked = fused.rank_candidates(test.candidates, scores)
            report = metrics.ranking_report(ranked, test.gains, ks=params.eval_ks, recall_k=100)
            results[task][method] = {"kind": kind, **{key: round(value, 5) for key, value in report.items()
                                                       if key in ("ndcg@10", "hr@10", "recall@100", "mrr")}}
            curve += [{"task": task, "method": method, "k": k, "ndcg": round(report[f"ndcg@{k}"], 5)}
                      for k in params.eval_ks]
            for name, part in slices.items():
                if part.rows:
                    report = metrics.ranking_report([ranked[row] for row in part.rows], part.gains, ks=(10,))
                    sliced[name][method] = {key: round(report[key], 5) for key in ("ndcg@10", "hr@10")}
        served = load_served(fusion_dir, task)
        results[task]["served"] = {"kind": "served", "method": served,
                                   **{key: results[task][served][key] for key in ("ndcg@10", "hr@10")}}
        relevance = load_relevance(fusion_dir, task)
        if relevance is not None:
            results[task]["relevance"] = relevance_report(test, components, matcher, relevance)
        results[task]["slices"] = sliced
        log.info("evaluated", extra={"task": task, "ndcg@10": {m: v["ndcg@10"] for m, v in results[task].items()
                                                              if isinstance(v, dict) and "ndcg@10" in v}})
    if all("skipped" in result for result in results.values()):
        raise DataError(f"{features_dir}: nothing to evaluate: "
                        + "; ".join(f"{task}: {result['skipped']}" for task, result in results.items()))
    for path in (metrics_path, plot_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with open(plot_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["task", "method", "k", "ndcg"])
        writer.writeheader()
        writer.writerows(curve)
    return results
