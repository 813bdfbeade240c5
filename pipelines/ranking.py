"""Fused ranking: recall components and a fitted fusion into one ranked list.

The same functions rank offline (the fuse and evaluate stages, the benchmarks) and online (the
service): candidates are pooled from each component's top-k, every component scores every
candidate, and the fusion turns those scores into one. Candidate matrices are item positions
padded with -1 to one width; padding never ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipelines import fusion
from pipelines.rankers.base import Ranker, Request

PADDING = -1


def pool_candidates(components: Mapping[str, Ranker], requests: Sequence[Request], k: int,
                    exclude_history: bool = False) -> np.ndarray:
    """Per request, the union of each component's top-k (the first component's list, then what each next adds)."""
    tops = [component.retrieve(requests, k, exclude_history=exclude_history)[0] for component in components.values()]
    pools = [list(dict.fromkeys(np.concatenate([top[row] for top in tops]).tolist())) for row in range(len(requests))]
    width = max((len(pool) for pool in pools), default=1)
    padded = np.full((len(requests), width), PADDING, dtype=np.int64)
    for row, pool in enumerate(pools):
        padded[row, :len(pool)] = pool
    return padded


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


def stacking_features(component_scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Per candidate: each component's raw score, per-request z-score and rank (what LambdaRank stacks)."""
    columns, names = [], []
    for name, scores in component_scores.items():
        finite = np.where(np.isfinite(scores), scores, np.nan)
        columns += [np.nan_to_num(finite, nan=0.0), fusion.normalize_scores(scores, "zscore"),
                    fusion.ranks(scores).astype(np.float64)]
        names += [f"{name}_score", f"{name}_z", f"{name}_rank"]
    return np.stack(columns, axis=2), names

