"""Every ranking metric in one place.

Conventions: `ranked` is a sequence of item ids (or indices) in ranked order for one request;
`gains` maps the judged items of that request to their gain (graded relevance, or 1 for the
one positive of a recommendation request). Unjudged items have gain 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np


def dcg(gains_in_order: Sequence[float]) -> float:
    gains = np.asarray(gains_in_order, dtype=float)
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def ndcg_at_k(ranked: Sequence[Hashable], gains: Mapping[Hashable, float], k: int) -> float:
    """Normalized DCG with linear gains; 0 when no judged item has a positive gain."""
    ideal = dcg(sorted((g for g in gains.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([gains.get(item, 0.0) for item in list(ranked)[:k]]) / ideal


def recall_at_k(ranked: Sequence[Hashable], gains: Mapping[Hashable, float], k: int) -> float:
    relevant = {item for item, gain in gains.items() if gain > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(list(ranked)[:k])) / len(relevant)


def hit_rate_at_k(ranked: Sequence[Hashable], gains: Mapping[Hashable, float], k: int) -> float:
    return float(any(gains.get(item, 0.0) > 0 for item in list(ranked)[:k]))


def reciprocal_rank(ranked: Sequence[Hashable], gains: Mapping[Hashable, float]) -> float:
    for position, item in enumerate(ranked, start=1):
        if gains.get(item, 0.0) > 0:
            return 1.0 / position
    return 0.0


def rmse(predicted: Sequence[float], actual: Sequence[float]) -> float:
    predicted, actual = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def catalog_coverage(top_lists: Sequence[Sequence[Hashable]], n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    shown = {item for top in top_lists for item in top}
    return len(shown) / n_items if n_items else 0.0


def popularity_bias(top_lists: Sequence[Sequence[Hashable]], popularity: Mapping[Hashable, float]) -> float:
    """Mean popularity percentile (0 = rarest, 1 = most popular) of the recommended items."""
    ordered = sorted(popularity, key=popularity.get)
    percentile = {item: rank / max(len(ordered) - 1, 1) for rank, item in enumerate(ordered)}
    shown = [percentile.get(item, 0.0) for top in top_lists for item in top]
    return float(np.mean(shown)) if shown else 0.0


def ranking_report(rankings: Sequence[Sequence[Hashable]], judgments: Sequence[Mapping[Hashable, float]],
                   ks: Sequence[int] = (10,), recall_k: int = 100) -> dict[str, float]:
    """Mean NDCG@k, HR@k for each k, Recall@recall_k and MRR over requests."""
    report: dict[str, float] = {}
    for k in ks:
        report[f"ndcg@{k}"] = float(np.mean([ndcg_at_k(r, g, k) for r, g in zip(rankings, judgments)]))
        report[f"hr@{k}"] = float(np.mean([hit_rate_at_k(r, g, k) for r, g in zip(rankings, judgments)]))
    report[f"recall@{recall_k}"] = float(np.mean([recall_at_k(r, g, recall_k) for r, g in zip(rankings, judgments)]))
    report["mrr"] = float(np.mean([reciprocal_rank(r, g) for r, g in zip(rankings, judgments)]))
    return report
