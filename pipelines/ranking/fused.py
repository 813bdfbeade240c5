"""Fused ranking: recall components and a fitted fusion into one ranked list.

The same functions rank offline (the fuse and evaluate stages, the benchmarks) and online (the
service): candidates are pooled from each component's top-k, every component scores every
candidate, and the fusion turns those scores into one. Candidate matrices are item positions
padded with -1 to one width; padding never ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pipelines.core.items import Request
from pipelines.models.rankers.base import Ranker
from pipelines.ranking import fusion

PADDING = -1


def pool_candidates(components: Mapping[str, Ranker], requests: Sequence[Request], k: int,
                    exclude_history: bool = False) -> np.ndarray:
    """Per request, the union of each component's top-k (the first component's list, then what each next adds)."""
    tops = [component.retrieve(requests, k, exclude_history=exclude_history)[0] for component in components.values()]
    return padded([list(dict.fromkeys(np.concatenate([top[row] for top in tops]).tolist())) for row in range(len(requests))])


def padded(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Lists of item positions as one matrix, padded with PADDING to the longest."""
    width = max((len(row) for row in rows), default=1)
    matrix = np.full((len(rows), width), PADDING, dtype=np.int64)
    for index, row in enumerate(rows):
        matrix[index, :len(row)] = row
    return matrix


def candidate_scores(components: Mapping[str, Ranker], requests: Sequence[Request],
                     candidates: np.ndarray) -> dict[str, np.ndarray]:
    """Each component's scores of the candidates; padding gets -inf."""
    padding = candidates == PADDING
    safe = np.where(padding, 0, candidates)
    return {name: np.where(padding, -np.inf, np.asarray(component.score(requests, safe), dtype=np.float64))
            for name, component in components.items()}


def gain_matrix(candidates: np.ndarray, gains: Sequence[Mapping[int, float]]) -> np.ndarray:
    return np.array([[judged.get(int(item), 0.0) for item in row] for row, judged in zip(candidates, gains)],
                    dtype=np.float64).reshape(candidates.shape)


def rank_candidates(candidates: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
    """Candidates of each request ordered by score, best first, padding dropped."""
    values = np.where(candidates == PADDING, -np.inf, np.nan_to_num(scores, nan=-np.inf))
    order = np.argsort(-values, axis=1, kind="stable")
    return [row[rank][row[rank] != PADDING] for row, rank in zip(candidates, order)]


def stage_one_order(stage_one: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Column indices of each request's candidates, best stage-one score first (padding last)."""
    values = np.where(candidates == PADDING, -np.inf, np.nan_to_num(stage_one, nan=-np.inf))
    return np.argsort(-values, axis=1, kind="stable")


def rerank_top(stage_one: np.ndarray, candidates: np.ndarray, depth: int,
               score_top: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Scores ordering each request's stage-one top `depth` by a re-ranker, the rest after them in stage-one order.

    score_top([n, depth] item positions (-1 = padding), their stage-one scores) -> the re-ranked scores.
    Returned scores are -(new position), so only the order carries meaning; padding stays -inf.
    """
    order = stage_one_order(stage_one, candidates)
    depth = min(depth, candidates.shape[1])
    top = order[:, :depth]
    top_items = np.take_along_axis(candidates, top, axis=1)
    top_scores = np.take_along_axis(np.asarray(stage_one, dtype=np.float64), top, axis=1)
    reranked = np.where(top_items == PADDING, -np.inf, np.asarray(score_top(top_items, top_scores), dtype=np.float64))
    order[:, :depth] = np.take_along_axis(top, np.argsort(-reranked, axis=1, kind="stable"), axis=1)
    scores = np.empty(candidates.shape, dtype=np.float64)
    np.put_along_axis(scores, order, -np.arange(candidates.shape[1], dtype=np.float64)[None, :].repeat(len(order), 0),
                      axis=1)
    return np.where(candidates == PADDING, -np.inf, scores)


def stacking_features(component_scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Per candidate: each component's raw score, per-request z-score and rank (what LambdaRank stacks)."""
    columns, names = [], []
    for name, scores in component_scores.items():
        finite = np.where(np.isfinite(scores), scores, np.nan)
        columns += [np.nan_to_num(finite, nan=0.0), fusion.normalize_scores(scores, "zscore"),
                    fusion.ranks(scores).astype(np.float64)]
        names += [f"{name}_score", f"{name}_z", f"{name}_rank"]
    return np.stack(columns, axis=2), names

