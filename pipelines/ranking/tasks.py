"""The ranking tasks (search, recommend): their requests pooled and scored, and the fitted fusions read back.

The fuse and evaluate stages and the service share these, so offline and online rank alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.data.dataset import POSITIVE_EVENTS, recommend_requests, search_requests
from pipelines.ranking import fused, fusion
from pipelines.ranking.history_match import HistoryMatcher
from pipelines.ranking.params import RankingParams
from pipelines.ranking.text_match import TitleMatcher

TASKS = ("search", "recommend")
WEIGHTED_FILE = "weighted.json"
LAMBDARANK_DIR = "lambdarank"
RELEVANCE_DIR = "relevance"  # search: the graded relevance model
RERANKED_FUSIONS = ("weighted", "lambdarank")  # stage ones whose top the search re-ranker re-orders
STAGE_ONE = "stage_one"
SERVED_FILE = "served.json"  # which fitted fusion orders the task's served lists, and why
FUSIONS = ("weighted", "lambdarank")


def choose_served(configured: str, cv_ndcg: dict[str, float | None]) -> str:
    """serving.fusion's choice; `auto`: the fusion with the higher cross-validated NDCG on the validation
    requests (a tie, or a fusion without a CV figure, keeps the LambdaRank stack)."""
    if configured != "auto":
        return configured
    weighted, stacked = cv_ndcg.get("weighted"), cv_ndcg.get("lambdarank")
    return "weighted" if weighted is not None and stacked is not None and weighted > stacked else "lambdarank"


def save_served(folder: Path, configured: str, weighted: fusion.WeightedFusion,
                stacked: fusion.LambdaRankFusion) -> str:
    cv_ndcg = {"weighted": weighted.cv_ndcg, "lambdarank": stacked.cv_ndcg}
    method = choose_served(configured, cv_ndcg)
    document = {"method": method, "configured": configured,
                "cv_ndcg": {name: None if value is None else round(value, 6) for name, value in cv_ndcg.items()}}
    (Path(folder) / SERVED_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return method


def load_served(fusion_dir: Path, task: str) -> str:
    """The fusion the fuse stage chose to serve for the task (served.json)."""
    path = Path(fusion_dir) / task / SERVED_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no served fusion recorded (rerun the fuse stage)")
    method = json.loads(path.read_text(encoding="utf-8"))["method"]
    if method not in FUSIONS:
        raise ValueError(f"{path}: method {method!r} is not one of {', '.join(FUSIONS)}")
    return method


def reranked_file(stage_one: str, reranker: str) -> str:
    return f"{stage_one}+{reranker}.json"


@dataclass
class TaskData:
    """One task's requests of one split, pooled and scored by its components."""

    requests: list
    gains: list[dict[int, float]]
    candidates: np.ndarray
    scores: dict[str, np.ndarray]
    components: dict = field(default_factory=dict)  # the fitted components that scored them (the matchers read some)

    @property
    def gain_matrix(self) -> np.ndarray:
        return fused.gain_matrix(self.candidates, self.gains)


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
    candidates = request_candidates(components, requests, params.candidates_per_component, task)
    return TaskData(requests, gains, candidates, fused.candidate_scores(components, requests, candidates), components)


def request_candidates(components: dict, requests: list, k: int, task: str) -> np.ndarray:
    """The candidates of each request: its given ones when it has them (a source's protocol, such as
    ReChorus's positive among 99 negatives), else the pool of each component's top-k. Recommendations
    leave out what the user already has; a search may show it again."""
    if requests and all(request.candidates for request in requests):
        return fused.padded([list(request.candidates) for request in requests])
    if any(request.candidates for request in requests):
        raise ValueError("some requests have given candidates and some do not")
    return fused.pool_candidates(components, requests, k, exclude_history=task == "recommend")


def top_slice(task_data_: TaskData, stage_one: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item positions, stage-one scores and column indices of each request's stage-one top `depth`."""
    top = fused.stage_one_order(stage_one, task_data_.candidates)[:, :depth]
    return (np.take_along_axis(task_data_.candidates, top, axis=1),
            np.take_along_axis(np.asarray(stage_one, dtype=np.float64), top, axis=1), top)


class RerankScores:
    """A re-ranker's scores of (request, item) pairs, each pair scored once however many stage ones ask
    (the tops of the weighted fusion and of the stack overlap; a cross-encoder pair costs milliseconds)."""

    def __init__(self, reranker, requests: list):
        self.reranker, self.requests = reranker, requests
        self.known: dict[tuple[int, int], float] = {}

    def __call__(self, items: np.ndarray) -> np.ndarray:
        """Scores of [n_requests, depth] item positions; padding -inf."""
        missing = [[item for item in row.tolist() if item != fused.PADDING and (index, item) not in self.known]
                   for index, row in enumerate(items)]
        width = max((len(row) for row in missing), default=0)
        if width:
            matrix = np.array([row + [row[0] if row else 0] * (width - len(row)) for row in missing], dtype=np.int64)
            scored = np.asarray(self.reranker.score(self.requests, matrix), dtype=np.float64)
            for index, row in enumerate(missing):
                self.known.update({(index, item): float(value) for item, value in zip(row, scored[index])})
        return np.array([[self.known[index, item] if item != fused.PADDING else -np.inf for item in row.tolist()]
                         for index, row in enumerate(items)], dtype=np.float64).reshape(items.shape)


def load_rerank_blend(fusion_dir: Path, task: str, stage_one: str, reranker: str) -> fusion.WeightedFusion:
    path = Path(fusion_dir) / task / reranked_file(stage_one, reranker)
    return fusion.WeightedFusion.from_dict(json.loads(path.read_text(encoding="utf-8")))


def load_fusions(fusion_dir: Path, task: str) -> tuple[fusion.WeightedFusion, fusion.LambdaRankFusion]:
    folder = Path(fusion_dir) / task
    weighted = fusion.WeightedFusion.from_dict(json.loads((folder / WEIGHTED_FILE).read_text(encoding="utf-8")))
    return weighted, fusion.LambdaRankFusion.load(folder / LAMBDARANK_DIR)


Matcher = TitleMatcher | HistoryMatcher


def stack_inputs(data: TaskData, matcher: Matcher | None) -> tuple[np.ndarray, list[str]]:
    """The LambdaRank stack's features of each candidate: every component's score, z-score and rank, and
    the task's matcher's: how the candidate's title matches the query (search), how the candidate relates
    to the user's last items and to the shop's activity (recommend)."""
    features, names = fused.stacking_features(data.scores)
    if matcher is None:
        return features, names
    extra = matcher.stack_features(data.requests, data.candidates, data.components)
    return np.concatenate([features, extra], axis=2), names + matcher.stack_names(data.components)


def with_judged(data: TaskData, components: dict) -> TaskData:
    """The same requests with each one's judged items appended to its candidates (scored like them), so the
    relevance model sees every judged pair, as the stack sees each candidate among its list."""
    rows = [list(dict.fromkeys(row[row != fused.PADDING].tolist() + list(judged)))
            for row, judged in zip(data.candidates, data.gains)]
    candidates = np.full((len(rows), max((len(row) for row in rows), default=1)), fused.PADDING, dtype=np.int64)
    for index, row in enumerate(rows):
        candidates[index, :len(row)] = row
    return TaskData(data.requests, data.gains, candidates, fused.candidate_scores(components, data.requests, candidates),
                    components)


def judged_pairs(data: TaskData, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, relevance) of every judged (request, item) pair among the candidates."""
    rows, columns, grades = [], [], []
    for row, (items, judged) in enumerate(zip(data.candidates, data.gains)):
        for column, item in enumerate(items.tolist()):
            if item in judged:
                rows.append(row), columns.append(column), grades.append(judged[item])
    return features[rows, columns], np.asarray(grades, dtype=np.float64)


def load_matcher(fusion_dir: Path, task: str) -> Matcher | None:
    """The matcher the fuse stage saved beside the task's stack; None when its stack has none."""
    folder = Path(fusion_dir) / task
    title = TitleMatcher.load(folder)
    return title if title is not None else HistoryMatcher.load(folder)


def load_relevance(fusion_dir: Path, task: str) -> fusion.RelevanceModel | None:
    folder = Path(fusion_dir) / task / RELEVANCE_DIR
    return fusion.RelevanceModel.load(folder) if folder.is_dir() else None
