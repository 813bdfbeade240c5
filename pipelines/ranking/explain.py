"""Why an item is ranked where it is: the fused score's decomposition, plus evidence from the data.

The weighted fusion scores a candidate as sum_c weight_c * normalize(score_c) (normalized within the
request's candidate list, as `WeightedFusion.score` does), so each component's contribution is
exactly weight_c * normalized_c and the listed contributions sum to the fused score. The reasons
are evidence a person can check: a relation to an item of the user's history ("bought together
with X"), the history item with the strongest item-CF similarity, query terms the item's text
contains, a category shared with a history item. Output: structured data plus one short sentence.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.items import Items
from pipelines.ranking.fusion import WeightedFusion, normalize_scores

TOKEN = re.compile(r"[a-z0-9]{2,}")
TITLE_CHARS = 40
COMPONENT_PHRASES = {
    "itemcf": "bought by shoppers with a similar history", "popularity": "popular right now",
    "bm25": "text match", "dense": "semantic match", "relations": "related to your items",
    "sasrec": "fits your recent sequence", "cross_encoder": "judged relevant to the query",
    "title": "its title holds the query's words",
}
RELATION_PHRASES = {"complement": "bought together with", "substitute": "an alternative to"}


@dataclass
class Contribution:
    component: str
    weight: float
    normalized: float
    contribution: float  # weight * normalized


@dataclass
class Reason:
    kind: str  # relation kind, "similar_history", "matches_query" or "same_category"
    text: str
    items: list[str] = field(default_factory=list)  # item ids the reason points at
    terms: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    item: str
    rank: int  # 1-based position in the fused order
    fused_score: float
    contributions: list[Contribution]  # every component, largest contribution first
    reasons: list[Reason]
    sentence: str

    def as_dict(self) -> dict:
        return asdict(self)


def relation_lookup(relations: pd.DataFrame | None) -> dict[tuple[int, int], str]:
    """(candidate, history item) -> relation kind, both directions (item positions)."""
    if relations is None or relations.empty:
        return {}
    lookup = {}
    for left, right, kind in zip(relations["item"], relations["related_item"], relations["relation"]):
        lookup.setdefault((int(left), int(right)), str(kind))
        lookup.setdefault((int(right), int(left)), str(kind))
    return lookup


def tokens(text: str | None) -> list[str]:
    return TOKEN.findall((text or "").lower())


def _title(items: Items, position: int) -> str:
    title = items.titles[position] or str(items.ids[position])
    return title if len(title) <= TITLE_CHARS else title[:TITLE_CHARS - 3] + "..."


def decompose(weights: Mapping[str, float], normalized: Mapping[str, float]) -> list[Contribution]:
    parts = [Contribution(name, float(weights[name]), float(normalized[name]), float(weights[name] * normalized[name]))
             for name in weights if name in normalized]
    return sorted(parts, key=lambda part: -part.contribution)


def group_shapley(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, reference: np.ndarray,
                  groups: Sequence[Sequence[int]]) -> tuple[np.ndarray, float]:
    """Exact Shapley values of feature *groups* (one per component) for a model of stacked features.

    A group "absent" takes the reference row's values (the serving engine passes the mean candidate of the
    list). Every coalition of groups is scored in one `predict` call (2**len(groups) rows per input row), so
    with a few components this costs one small batch instead of TreeSHAP per feature (measured on the Home
    Depot LambdaRank stack: 1.7 ms for 10 rows with pred_contrib, one predict of 80 rows ~0.2 ms).
    A group whose features equal the reference's in every row (a feature of the user, the same for every
    candidate of a list) changes no prediction: a null player, whose Shapley value is 0 and whose absence leaves
    the others' values as they are. It is left out of the coalitions, which halves their number each time (the
    recommend stack's history group: 128 -> 64 coalitions a row).
    Returns (values of shape rows x groups, base) with base + values.sum(axis=1) == predict(rows) exactly.
    """
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float32))
    reference = np.asarray(reference, dtype=np.float32)
    groups = [tuple(int(index) for index in group) for group in groups]
    players = [number for number, group in enumerate(groups)
               if not np.array_equal(rows[:, list(group)], np.broadcast_to(reference[list(group)], (len(rows), len(group))))]
    columns, combine = _coalitions(tuple(groups[number] for number in players), rows.shape[1])
    mixed = np.where(columns[None, :, :], rows[:, None, :], reference[None, None, :])
    values = np.asarray(predict(mixed.reshape(-1, rows.shape[1])), dtype=np.float64).reshape(len(rows), len(columns))
    shapley = np.zeros((len(rows), len(groups)))
    shapley[:, players] = values @ combine
    return shapley, float(values[0, 0])


@lru_cache(maxsize=32)
def _coalitions(groups: tuple[tuple[int, ...], ...], width: int) -> tuple[np.ndarray, np.ndarray]:
    """(which features each coalition of groups keeps [2**G, width], the weights [2**G, G] that turn the
    coalitions' predictions into Shapley values): the same for every list a model explains."""
    count = len(groups)
    masks = ((np.arange(2 ** count)[:, None] >> np.arange(count)) & 1).astype(bool)  # coalition x group
    columns = np.zeros((2 ** count, width), dtype=bool)
    for group, features in enumerate(groups):
        columns[:, list(features)] = masks[:, [group]]
    sizes = masks.sum(axis=1)
    factorial = np.cumprod([1.0, *range(1, count + 1)])
    combine = np.zeros((2 ** count, count))
    for group in range(count):
        without = np.flatnonzero(~masks[:, group])
        weights = factorial[sizes[without]] * factorial[count - sizes[without] - 1] / factorial[count]
        combine[without | (1 << group), group] += weights
        combine[without, group] -= weights
    columns.setflags(write=False)
    combine.setflags(write=False)
    return columns, combine


def evidence(candidate: int, items: Items, history: Sequence[int] = (), query: str | None = None,
             relations: Mapping[tuple[int, int], str] | None = None, similarity: sp.csr_matrix | None = None,
             limit: int = 3) -> list[Reason]:
    """Reasons for one candidate, newest history first."""
    reasons: list[Reason] = []
    recent = list(dict.fromkeys(reversed([int(h) for h in history])))
    for kind in ("complement", "substitute"):
        related = [h for h in recent if (relations or {}).get((candidate, h)) == kind][:2]
        if related:
            names = ", ".join(f'"{_title(items, h)}"' for h in related)
            reasons.append(Reason(kind, f"{RELATION_PHRASES[kind]} {names}", [str(items.ids[h]) for h in related]))
    if similarity is not None and recent:
        strengths = history_strengths(similarity, recent, candidate)
        if strengths.max(initial=0.0) > 0:
            best = recent[int(np.argmax(strengths))]
            reasons.append(Reason("similar_history", f'shoppers who bought "{_title(items, best)}" also bought this',
                                  [str(items.ids[best])]))
    if query:
        item_tokens = set(tokens(items.texts[candidate]))
        matched = [term for term in dict.fromkeys(tokens(query)) if term in item_tokens]
        if matched:
            reasons.append(Reason("matches_query", "matches query terms: " + ", ".join(matched), terms=matched))
    categories = items.categories
    if categories and categories[candidate]:
        same = [h for h in recent if categories[h] == categories[candidate]][:1]
        if same:
            reasons.append(Reason("same_category", f'same category as "{_title(items, same[0])}"',
                                  [str(items.ids[same[0]])]))
    return reasons[:limit]


_RECENT_ROWS = threading.local()  # this thread's last (similarity, recent items, their rows as CSC)


def history_strengths(similarity, recent: Sequence[int], candidate: int) -> np.ndarray:
    """similarity[recent, candidate] as a 1-d array: the history rows are sliced once per history (kept per
    thread) and each candidate of a list reads its column, instead of slicing the matrix per candidate."""
    if not sp.issparse(similarity) or not 0 <= candidate < similarity.shape[1]:
        return np.asarray(similarity[recent, :][:, [candidate]].todense()).ravel()
    key = tuple(recent)
    last = getattr(_RECENT_ROWS, "last", None)
    if last is None or last[0] is not similarity or last[1] != key:
        last = (similarity, key, similarity[list(key), :].tocsc())
        _RECENT_ROWS.last = last
    rows = last[2]
    start, end = rows.indptr[candidate], rows.indptr[candidate + 1]
    strengths = np.zeros(len(key), dtype=rows.dtype)
    np.add.at(strengths, rows.indices[start:end], rows.data[start:end])
    return strengths


JUST_DID = {"view": "viewed", "click": "clicked", "add_to_cart": "put in your cart", "purchase": "bought"}


def with_fresh_event(reasons: list[Reason], items: Items, fresh: Mapping[int, str], limit: int = 3) -> list[Reason]:
    """The reasons led by the shopper's fresh event (item position -> event type, from the live stream) that one of
    them points at: "you just viewed X" names why the list changed since their last visit."""
    for reason in reasons:
        for item_id in reason.items:
            position = items.position.get(item_id)
            if position is not None and position in fresh:
                fresh_reason = Reason("fresh_event", f'you just {JUST_DID.get(fresh[position], fresh[position])} '
                                                     f'"{_title(items, position)}"', [item_id])
                return [fresh_reason, *reasons][:limit]
    return reasons


def sentence(contributions: Sequence[Contribution], reasons: Sequence[Reason], top: int = 2) -> str:
    leading = [part for part in contributions if part.contribution > 0][:top]
    text = "Ranked here mainly because it is " + " and ".join(
        COMPONENT_PHRASES.get(part.component, part.component) for part in leading) if leading else "Ranked here"
    if reasons:
        text += "; " + "; ".join(reason.text for reason in reasons[:2])
    return text + "."


def explain_list(weights: Mapping[str, float], normalization: str, component_scores: Mapping[str, np.ndarray],
                 candidates: np.ndarray, items: Items, history: Sequence[int] = (), query: str | None = None,
                 relations: Mapping[tuple[int, int], str] | None = None, similarity: sp.csr_matrix | None = None,
                 top: int | None = None) -> list[Explanation]:
    """Explanations of one request's fused list, best first (`top` of them).

    component_scores: each component's raw scores of `candidates` (item positions), one row."""
    names = [name for name, weight in weights.items() if name in component_scores]
    if any(len(component_scores[name]) != len(candidates) for name in names):
        raise ValueError("each component needs one score per candidate")
    normalized = {name: normalize_scores(np.asarray(component_scores[name], dtype=np.float64)[None, :], normalization)[0]
                  for name in names}
    fused = sum(weights[name] * normalized[name] for name in names)
    order = np.argsort(-fused, kind="stable")[:top]
    out = []
    for rank, index in enumerate(order, start=1):
        contributions = decompose({n: weights[n] for n in names}, {n: normalized[n][index] for n in names})
        reasons = evidence(int(candidates[index]), items, history, query, relations, similarity)
        out.append(Explanation(str(items.ids[candidates[index]]), rank, float(sum(c.contribution for c in contributions)),
                               contributions, reasons, sentence(contributions, reasons)))
    return out


def explain_fusion(fusion: WeightedFusion, component_scores: Mapping[str, np.ndarray], candidates: np.ndarray,
                   items: Items, **evidence_sources) -> list[Explanation]:
    """`explain_list` with a fitted WeightedFusion's weights and normalization."""
    return explain_list(fusion.weights, fusion.normalization, component_scores, candidates, items, **evidence_sources)
