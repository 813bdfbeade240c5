"""Search benchmark on Home Depot: unseen test queries ranked over the full catalog.

Protocol. Unique normalized queries are split 80/20 by a seeded permutation; the 20% (test) never
reach fine-tuning nor fusion fitting. The training 80% is split again: `fit` queries fine-tune the
bi-encoder and the cross-encoder, `blend` queries (never seen by fine-tuning, so their scores are
honest) fit the fusions and the relevance regressor. Each test query ranks the FULL catalog.
Gain = relevance - 1 in the original 1..3 scale, i.e. the adapter's 0..2 relevance; unjudged = 0.

Methods: components BM25, raw MiniLM, fine-tuned MiniLM, the cross-encoder re-ranking the weighted
fusion's top; fusions RRF, weighted (CV-fitted), weighted with the cross-encoder, and LambdaRank
stacking over component scores and text features. Candidates of a query = its components' top lists
interleaved, first `candidates` distinct items. `rmse`: predicted relevance (1..3) of the test
queries' judged pairs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipelines import fusion, metrics
from pipelines.bench import BenchResult, report
from pipelines.config import Settings, section
from pipelines.logs import get_logger
from pipelines.ranking import gain_matrix, rank_candidates
from pipelines.rankers.base import Items, Request, TrainingData
from pipelines.rankers.bm25 import BM25, bm25_params, tokenize
from pipelines.rankers.cross_encoder import CrossEncoderRanker, cross_encoder_params
from pipelines.rankers.dense import DenseRetriever, dense_params
from pipelines.training import FinetuneParams, finetune_params, mine_negatives, train_bi_encoder, train_cross_encoder

log = get_logger(__name__)

RELEVANCE_OFFSET = 1.0  # adapter relevance 0..2 = original 1..3 minus 1
SCAN_BATCH = 256


class SearchBenchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    blend_fraction: float = Field(0.2, gt=0, lt=1)  # of the training queries: kept out of fine-tuning, fit fusion
    max_queries: int | None = Field(None, ge=10)  # development: keep only this many queries (seeded)
    candidates: int = Field(150, ge=10)  # fused candidates per query
    metric_depth: int = Field(1000, ge=100)  # depth of the components' full-catalog rankings
    item_field: str = "titles"  # what the text models read: titles | texts
    rerank_depth: int | None = None  # overrides text.cross_encoder.rerank_depth
    stack_queries: int | None = Field(None, ge=20)  # blend queries the cross-encoder scores to fit the stack
    work_dir: str | None = None  # keep fine-tuned models here (default: a temporary folder)
    bi_encoder_max_steps: int | None = Field(None, ge=1)  # real-data budgets; None = finetune.*.max_steps
    cross_encoder_max_steps: int | None = Field(None, ge=1)


@dataclass
class SearchData:
    items: Items
    query_texts: list[str]
    judgments: pd.DataFrame  # query, item (positions), relevance (0..2)
    splits: dict[str, np.ndarray] = field(default_factory=dict)  # fit | blend | test: query positions

    def gains(self, queries: np.ndarray) -> list[dict[int, float]]:
        by_query = self.judgments.groupby("query")
        present = set(by_query.groups)
        return [dict(zip(by_query.get_group(q)["item"], by_query.get_group(q)["relevance"])) if q in present else {}
                for q in queries]

    def requests(self, queries: np.ndarray) -> list[Request]:
        return [Request(query=self.query_texts[q]) for q in queries]


# ---------------------------------------------------------------- data and split

def load_search_data(path: Path, work: Path) -> SearchData:
    """Home Depot through the project's adapter; queries are its normalized query ids."""
    from pipelines.sources.home_depot import convert, normalize_query

    convert(Path(path), work)
    catalog = pd.read_csv(work / "catalog.csv", dtype=str, keep_default_na=False)
    queries = pd.read_csv(work / "queries.csv", dtype=str, keep_default_na=False)
    items = Items.from_catalog(catalog.drop(columns=["price"]))  # Home Depot has no prices
    query_ids, query_index = np.unique(queries["query_id"].to_numpy(), return_inverse=True)
    normalized = normalize_query(queries["query"])
    first_text = pd.Series(normalized.to_numpy()).groupby(query_index).first()
    judgments = pd.DataFrame({"query": query_index, "item": items.positions(queries["item_id"]),
                              "relevance": queries["relevance"].astype(float)})
    judgments = judgments.groupby(["query", "item"], as_index=False)["relevance"].mean()
    return SearchData(items, first_text.tolist(), judgments)


def split_queries(n_queries: int, params: SearchBenchParams) -> dict[str, np.ndarray]:
    """test: a seeded 20% of the unique queries; the rest split into fit (fine-tuning) and blend (fusion)."""
    order = np.random.default_rng(params.seed).permutation(n_queries)
    if params.max_queries:
        order = order[:params.max_queries]
    n_test = int(round(len(order) * params.test_fraction))
    test, train = order[:n_test], order[n_test:]
    n_blend = int(round(len(train) * params.blend_fraction))
    return {"test": np.sort(test), "blend": np.sort(train[:n_blend]), "fit": np.sort(train[n_blend:])}


# ---------------------------------------------------------------- scoring the catalog

ScoreBlock = Callable[[np.ndarray], np.ndarray]  # query positions -> scores [n, n_items]


def bm25_block(ranker: BM25, data: SearchData) -> ScoreBlock:
    return lambda queries: ranker.score_all(data.requests(queries))


def dense_block(ranker: DenseRetriever, data: SearchData, queries: np.ndarray) -> ScoreBlock:
    """Embeds the given queries once; the block is then a matrix product per batch."""
    vectors = ranker.encode([data.query_texts[q] for q in queries])
    row_of = {q: row for row, q in enumerate(queries)}
    return lambda block: vectors[[row_of[q] for q in block]] @ ranker.item_embeddings.T


def top_lists(score: ScoreBlock, queries: np.ndarray, k: int) -> np.ndarray:
    """Best k item positions per query over the whole catalog, best first."""
    out = []
    for start in range(0, len(queries), SCAN_BATCH):
        scores = score(queries[start:start + SCAN_BATCH])
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, axis=1))
    return np.vstack(out) if out else np.zeros((0, k), dtype=np.int64)


def gather(score: ScoreBlock, queries: np.ndarray, *column_sets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each [n, width] matrix of item positions: their scores and full-catalog ranks (1 = best).

    Entries -1 (padding) give nan. Each batch of catalog scores is computed and sorted once.
    """
    outputs = [(np.full(c.shape, np.nan, dtype=np.float32), np.full(c.shape, np.nan, dtype=np.float32))
               for c in column_sets]
    for start in range(0, len(queries), SCAN_BATCH):
        scores = score(queries[start:start + SCAN_BATCH])
        ascending = np.sort(scores, axis=1)
        for columns, (scores_out, ranks_out) in zip(column_sets, outputs):
            block = columns[start:start + SCAN_BATCH]
            valid = block >= 0
            picked = np.take_along_axis(scores, np.where(valid, block, 0), axis=1)
            ranks = np.array([scores.shape[1] - np.searchsorted(row, chosen, side="right") + 1
                              for row, chosen in zip(ascending, picked)])
            scores_out[start:start + len(block)] = np.where(valid, picked, np.nan)
            ranks_out[start:start + len(block)] = np.where(valid, ranks, np.nan)
    return outputs


def interleave(lists: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Per query: the components' top lists taken rank by rank, first `size` distinct items."""
    stacked = np.stack(lists, axis=2)  # [n, depth, n_lists]
    out = np.full((stacked.shape[0], size), -1, dtype=np.int64)
    for row, ranked in enumerate(stacked.reshape(stacked.shape[0], -1)):
        _, first = np.unique(ranked, return_index=True)
        distinct = ranked[np.sort(first)][:size]
        out[row, :len(distinct)] = distinct
    return out


def judged_columns(data: SearchData, queries: np.ndarray) -> np.ndarray:
    """Judged item positions per query, padded with -1."""
    gains = data.gains(queries)
    width = max((len(g) for g in gains), default=1)
    out = np.full((len(queries), max(width, 1)), -1, dtype=np.int64)
    for row, judged in enumerate(gains):
        out[row, :len(judged)] = list(judged)
    return out


# ---------------------------------------------------------------- metrics

def ranking_metrics(rankings: Sequence[Sequence[int]], gains: Sequence[dict[int, float]]) -> dict[str, float]:
    report_ = metrics.ranking_report(rankings, gains, ks=(10,), recall_k=100)
    return {key: report_[key] for key in ("ndcg@10", "recall@100", "mrr")}


# ---------------------------------------------------------------- text features

def text_features(query: str, title: str, stemming: bool = True) -> list[float]:
    """Query-title overlap: share of query tokens in the title, exact containment, numbers matched, lengths."""
    query_tokens, title_tokens = tokenize(query, stemming, True), tokenize(title, stemming, True)
    title_set = set(title_tokens)
    overlap = sum(token in title_set for token in query_tokens) / len(query_tokens) if query_tokens else 0.0
    numbers = [token for token in query_tokens if any(ch.isdigit() for ch in token)]
    numbers_matched = sum(token in title_set for token in numbers) / len(numbers) if numbers else -1.0
    last_word = float(bool(query_tokens) and query_tokens[-1] in title_set)
    return [overlap, float(query.lower() in title.lower()), numbers_matched, last_word,
            float(len(title_tokens)), float(len(query_tokens))]


TEXT_FEATURES = ["overlap", "contains_query", "numbers_matched", "last_word_matched", "title_tokens", "query_tokens"]


def pair_text_features(data: SearchData, queries: np.ndarray, columns: np.ndarray) -> np.ndarray:
    titles = data.items.titles
    out = np.full(columns.shape + (len(TEXT_FEATURES),), np.nan, dtype=np.float32)
    for row, (query, items) in enumerate(zip(queries, columns)):
        for column, item in enumerate(items):
            if item >= 0:
                out[row, column] = text_features(data.query_texts[query], titles[item])
    return out


def item_priors(data: SearchData, fit_queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item: how often fit queries judged it, and its mean relevance there (nan when never)."""
    judged = data.judgments[data.judgments["query"].isin(fit_queries)]
    counts = np.bincount(judged["item"], minlength=len(data.items)).astype(np.float32)
    sums = np.bincount(judged["item"], weights=judged["relevance"], minlength=len(data.items))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)
    return counts, means


# ---------------------------------------------------------------- the run

class _Phases:
    """Wall seconds per phase, logged as each ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._start, 1)
        self._start = now
        log.info("phase done", extra={"phase": name, "seconds": self.seconds[name]})


@dataclass
class _QuerySet:
    """Everything the fusions need about one set of queries (blend or test)."""

    queries: np.ndarray
    gains: list[dict[int, float]]
    candidates: np.ndarray = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # component -> [n, candidates]
    ranks: dict[str, np.ndarray] = field(default_factory=dict)
    judged: np.ndarray = None
    judged_scores: dict[str, np.ndarray] = field(default_factory=dict)
    judged_ranks: dict[str, np.ndarray] = field(default_factory=dict)


def _subset(query_set: _QuerySet, rows: np.ndarray) -> _QuerySet:
    pick = lambda values: {name: matrix[rows] for name, matrix in values.items()}  # noqa: E731
    return _QuerySet(query_set.queries[rows], [query_set.gains[row] for row in rows], query_set.candidates[rows],
                     pick(query_set.scores), pick(query_set.ranks), query_set.judged[rows],
                     pick(query_set.judged_scores), pick(query_set.judged_ranks))


def _record_fit(kind: str, queries) -> None:
    """Audit trail: which query positions feed each fitted model (the tests check test queries never do)."""
    log.info("fit inputs", extra={"fit": kind, "queries": int(len(set(np.asarray(queries).tolist())))})


def _fit_bi_encoder(data: SearchData, bm25_top: np.ndarray, fit: np.ndarray, tuning: FinetuneParams,
                    out_dir: Path, texts: list[str]) -> dict:
    from pipelines.training import search_pairs

    judged = data.judgments[data.judgments["query"].isin(fit)]
    pairs = search_pairs(judged, data.query_texts, texts, tuning.min_positive_relevance)
    row_of = {q: row for row, q in enumerate(fit)}
    judged_sets = [set() for _ in fit]
    for query, item in zip(judged["query"], judged["item"]):
        judged_sets[row_of[query]].add(item)
    if tuning.hard_negatives:
        negatives = mine_negatives(bm25_top, judged_sets, np.array([row_of[q] for q in pairs["query"]]), tuning.seed)
        pairs["negative"] = [texts[n] if n >= 0 else "" for n in negatives[:, 0]]
    _record_fit("bi_encoder", pairs["query"].to_numpy())
    result = train_bi_encoder(pairs[[c for c in ("anchor", "positive", "negative") if c in pairs]], out_dir, tuning)
    return {"pairs": len(pairs), "queries": pairs["query"].nunique(), **result.as_dict()}


def _fit_cross_encoder(data: SearchData, negative_pool: np.ndarray, fit: np.ndarray, tuning: FinetuneParams,
                       out_dir: Path, texts: list[str]) -> dict:
    judged = data.judgments[data.judgments["query"].isin(fit)].reset_index(drop=True)
    row_of = {q: row for row, q in enumerate(fit)}
    judged_sets = [set() for _ in fit]
    for query, item in zip(judged["query"], judged["item"]):
        judged_sets[row_of[query]].add(item)
    frames = [pd.DataFrame({"query": [data.query_texts[q] for q in judged["query"]],
                            "text": [texts[i] for i in judged["item"]],
                            "gain": judged["relevance"], "relevance": judged["relevance"]})]
    if tuning.cross_encoder_negatives:
        rows = np.array([row_of[q] for q in judged["query"]])
        negatives = mine_negatives(negative_pool, judged_sets, rows, tuning.seed + 1, tuning.cross_encoder_negatives)
        keep = negatives >= 0
        query_of = np.repeat(judged["query"].to_numpy()[:, None], negatives.shape[1], axis=1)[keep]
        frames.append(pd.DataFrame({"query": [data.query_texts[q] for q in query_of],
                                    "text": [texts[i] for i in negatives[keep]], "gain": 0.0, "relevance": np.nan}))
    examples = pd.concat(frames, ignore_index=True)
    _record_fit("cross_encoder", judged["query"].to_numpy())
    result = train_cross_encoder(examples, out_dir, tuning)
    return {"training_rows": len(examples), "judged_pairs": len(judged), **result.as_dict()}


def _components_on(sets: dict[str, _QuerySet], blocks: dict[str, Callable[[np.ndarray], ScoreBlock]],
                   params: SearchBenchParams, phases: _Phases, result: BenchResult, data: SearchData) -> None:
    """Full-catalog metrics of each component on test; candidates and their scores for blend and test."""
    tops = {name: {} for name in blocks}
    made = {(name, set_name): make(query_set.queries) for name, make in blocks.items()
            for set_name, query_set in sets.items()}
    for name in blocks:
        for set_name, query_set in sets.items():
            tops[name][set_name] = top_lists(made[name, set_name], query_set.queries, params.metric_depth)
        rankings = list(tops[name]["test"])
        result.add(name, "component", ranking_metrics(rankings, sets["test"].gains))
        phases.end(f"rank_{name}")
    for set_name, query_set in sets.items():
        query_set.candidates = interleave([tops[name][set_name][:, :params.candidates] for name in blocks],
                                          params.candidates)
        query_set.judged = judged_columns(data, query_set.queries)
        for name in blocks:
            score = made[name, set_name]
            (query_set.scores[name], query_set.ranks[name]), (query_set.judged_scores[name],
                                                              query_set.judged_ranks[name]) = gather(
                score, query_set.queries, query_set.candidates, query_set.judged)
    phases.end("gather_candidates")


def _rerank_with_cross_encoder(query_set: _QuerySet, stage_one: np.ndarray, ranker: CrossEncoderRanker, depth: int,
                               data: SearchData) -> int:
    """Cross-encoder gain for the stage-one top `depth` (others nan); both outputs for the judged pairs."""
    top = np.argsort(-stage_one, axis=1, kind="stable")[:, :depth]
    columns = np.take_along_axis(query_set.candidates, top, axis=1)
    # one pass over the distinct (query, item) pairs: re-ranked tops and judged pairs overlap
    wanted = [(q, item) for q, row in zip(query_set.queries, columns) for item in row if item >= 0]
    wanted += [(q, item) for q, row in zip(query_set.queries, query_set.judged) for item in row if item >= 0]
    distinct = list(dict.fromkeys(wanted))
    slot = {pair: index for index, pair in enumerate(distinct)}
    both = ranker.predict([(data.query_texts[q], ranker.texts[item]) for q, item in distinct])

    def lookup(matrix: np.ndarray, output: int) -> np.ndarray:
        values = np.full(matrix.shape, np.nan, dtype=np.float32)
        for row, (q, items) in enumerate(zip(query_set.queries, matrix)):
            for column, item in enumerate(items):
                if item >= 0:
                    values[row, column] = both[slot[q, item], output]
        return values

    scores = np.full(query_set.candidates.shape, np.nan, dtype=np.float32)
    np.put_along_axis(scores, top, lookup(columns, 0), axis=1)
    query_set.scores["cross_encoder"] = scores
    query_set.judged_scores["cross_encoder_gain"] = lookup(query_set.judged, 0)
    query_set.judged_scores["cross_encoder_relevance"] = lookup(query_set.judged, 1)
    return len(distinct)


def _floored(scores: np.ndarray) -> np.ndarray:
    """nan (not scored) becomes the row's lowest score."""
    floor = np.nanmin(np.where(np.isnan(scores), np.inf, scores), axis=1, keepdims=True)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    return np.where(np.isnan(scores), floor, scores)


def _stack_features(query_set: _QuerySet, stage_one: np.ndarray, data: SearchData,
                    priors: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    columns, names = [], []
    for name, scores in query_set.scores.items():
        columns.append(_floored(scores))
        names.append(name)
        columns.append(fusion.normalize_scores(_floored(scores), "zscore"))
        names.append(f"{name}_z")
        if name in query_set.ranks:
            columns.append(np.log1p(query_set.ranks[name]))
            names.append(f"{name}_log_rank")
    columns.append(np.isnan(query_set.scores["cross_encoder"]).astype(np.float32))
    names.append("not_reranked")
    columns.append(fusion.normalize_scores(stage_one, "zscore"))
    names.append("stage_one_z")
    text = pair_text_features(data, query_set.queries, query_set.candidates)
    counts, means = priors
    safe = np.maximum(query_set.candidates, 0)
    features = np.concatenate([np.stack(columns, axis=2), text, counts[safe][..., None], means[safe][..., None]], axis=2)
    return features.astype(np.float32), names + TEXT_FEATURES + ["item_judged_count", "item_mean_relevance"]


def _relevance_features(query_set: _QuerySet, data: SearchData, priors: tuple[np.ndarray, np.ndarray]):
    """One row per judged pair: component scores and ranks, both cross-encoder outputs, text, item priors."""
    valid = query_set.judged >= 0
    columns, names = [], []
    for name, scores in query_set.judged_scores.items():
        columns.append(scores[valid])
        names.append(name)
    for name, ranks in query_set.judged_ranks.items():
        columns.append(np.log1p(ranks[valid]))
        names.append(f"{name}_log_rank")
    text = pair_text_features(data, query_set.queries, query_set.judged)[valid]
    counts, means = priors
    items = query_set.judged[valid]
    table = np.column_stack(columns + [text, counts[items], means[items]]).astype(np.float32)
    gains = np.array([g[item] for g, row in zip(query_set.gains, query_set.judged) for item in row if item >= 0])
    return table, names + TEXT_FEATURES + ["item_judged_count", "item_mean_relevance"], gains


def _fit_relevance_regressor(table: np.ndarray, target: np.ndarray, seed: int):
    import lightgbm as lgb

    model = lgb.LGBMRegressor(n_estimators=400, learning_rate=0.03, num_leaves=31, min_child_samples=30,
                              subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
                              random_state=seed, n_jobs=2, verbose=-1)
    return model.fit(table, target)


def _rmse(predicted: np.ndarray, gains: np.ndarray) -> float:
    original = np.clip(np.asarray(predicted) + RELEVANCE_OFFSET, 1.0, 3.0)
    return metrics.rmse(original, np.asarray(gains) + RELEVANCE_OFFSET)


def run(path: Path, json_out: Path | None, settings: Settings) -> dict:
    params = section(settings, "search_bench", SearchBenchParams)
    tuning = _benchmark_tuning(finetune_params(settings), params)
    fusion_params = section(settings, "fusion", fusion.FusionParams)
    result = BenchResult("home-depot", "unseen 20% of normalized queries (seed 0), full-catalog ranking, "
                                       "gain = relevance - 1 (1..3 scale)")
    phases = _Phases()
    with tempfile.TemporaryDirectory(prefix="shopfusion-search-") as temporary:
        work = Path(params.work_dir) if params.work_dir else Path(temporary)
        document = _run(path, params, tuning, fusion_params, settings, work, phases, result)
    result.extra.update(document)
    result.extra["phase_seconds"] = phases.seconds
    return report(result, json_out)


def _benchmark_tuning(tuning: FinetuneParams, params: SearchBenchParams) -> FinetuneParams:
    """The finetune section with the benchmark's own step budgets (the stage's defaults fit the small sample)."""
    loops = {name: getattr(tuning, name).model_copy(update={"max_steps": steps})
             for name, steps in (("bi_encoder", params.bi_encoder_max_steps),
                                 ("cross_encoder", params.cross_encoder_max_steps)) if steps}
    return tuning.model_copy(update=loops)


def _run(path, params: SearchBenchParams, tuning: FinetuneParams, fusion_params: fusion.FusionParams,
         settings: Settings, work: Path, phases: _Phases, result: BenchResult) -> dict:
    data = load_search_data(path, work / "tables")
    data.splits = split_queries(len(data.query_texts), params)
    texts = getattr(data.items, params.item_field)
    extra: dict = {"splits": {name: int(len(q)) for name, q in data.splits.items()}, "items": len(data.items)}
    phases.end("load")

    training = TrainingData(data.items)
    bm25 = BM25(bm25_params(settings).model_copy(update={"field": params.item_field}))
    bm25.fit(training)
    # model_path None: the raw packaged MiniLM (text.dense.model_path names the sample pipeline's fine-tuned one)
    dense_settings = dense_params(settings).model_copy(update={"field": params.item_field, "model_path": None})
    raw_dense = DenseRetriever(dense_settings).fit(training)
    phases.end("index_bm25_and_embed_raw")

    fit = data.splits["fit"]
    bm25_fit_top = top_lists(bm25_block(bm25, data), fit, tuning.hard_negative_depth)
    raw_fit_top = top_lists(dense_block(raw_dense, data, fit), fit, tuning.hard_negative_depth)
    extra["bi_encoder_training"] = _fit_bi_encoder(data, bm25_fit_top, fit, tuning, work / "bi_encoder", texts)
    phases.end("finetune_bi_encoder")
    tuned_dense = DenseRetriever(dense_settings.model_copy(update={"model_path": str(work / "bi_encoder" / "model")}))
    tuned_dense.fit(training)
    phases.end("embed_finetuned")

    ce_pool = interleave([bm25_fit_top, raw_fit_top], tuning.hard_negative_depth)
    extra["cross_encoder_training"] = _fit_cross_encoder(data, ce_pool, fit, tuning, work / "cross_encoder", texts)
    phases.end("finetune_cross_encoder")

    sets = {name: _QuerySet(data.splits[name], data.gains(data.splits[name])) for name in ("blend", "test")}
    blocks = {"bm25": lambda queries: bm25_block(bm25, data),
              "dense_minilm": lambda queries: dense_block(raw_dense, data, queries),
              "dense_finetuned": lambda queries: dense_block(tuned_dense, data, queries)}
    _components_on(sets, blocks, params, phases, result, data)

    blend, test = sets["blend"], sets["test"]
    blend_gains = gain_matrix(blend.candidates, blend.gains)
    base = list(blocks)
    result.add("rrf", "fusion", ranking_metrics(
        rank_candidates(test.candidates, fusion.rrf({n: test.scores[n] for n in base}, fusion_params.rrf_k)),
        test.gains))
    _record_fit("weighted", blend.queries)
    weighted = fusion.WeightedFusion.from_params(fusion_params).fit(
        {n: blend.scores[n] for n in base}, blend_gains, fusion_params.folds, params.seed, fusion_params.metric_k)
    blend_stage_one = weighted.score({n: blend.scores[n] for n in base})
    test_stage_one = weighted.score({n: test.scores[n] for n in base})
    result.add("weighted", "fusion", ranking_metrics(rank_candidates(test.candidates, test_stage_one), test.gains))
    extra["weighted_fusion"] = weighted.to_dict()
    phases.end("fuse_rrf_weighted")

    ce_params = cross_encoder_params(settings).model_copy(update={
        "model_path": str(work / "cross_encoder" / "model"), "field": params.item_field})
    depth = params.rerank_depth or ce_params.rerank_depth
    cross = CrossEncoderRanker(ce_params).fit(training)
    if params.stack_queries and params.stack_queries < len(blend.queries):
        rows = np.sort(np.random.default_rng(params.seed).permutation(len(blend.queries))[:params.stack_queries])
        blend, blend_stage_one = _subset(blend, rows), blend_stage_one[rows]
        blend_gains = blend_gains[rows]
    extra["stack_queries"] = len(blend.queries)
    started = time.perf_counter()
    n_pairs = sum(_rerank_with_cross_encoder(query_set, stage_one, cross, depth, data)
                  for query_set, stage_one in ((blend, blend_stage_one), (test, test_stage_one)))
    extra["cross_encoder_pairs"] = n_pairs
    extra["cross_encoder_pairs_per_second"] = round(n_pairs / (time.perf_counter() - started), 1)
    reranked = np.where(np.isnan(test.scores["cross_encoder"]), -np.inf, test.scores["cross_encoder"])
    ce_order = np.where(np.isfinite(reranked), reranked + 1e6, fusion.normalize_scores(test_stage_one, "zscore"))
    valid = test.judged >= 0
    test_rel = np.array([g[i] for g, row in zip(test.gains, test.judged) for i in row if i >= 0])
    ce_rmse = _rmse(test.judged_scores["cross_encoder_relevance"][valid], test_rel)
    result.add("cross_encoder", "component", {**ranking_metrics(rank_candidates(test.candidates, ce_order), test.gains),
                                              "rmse": ce_rmse})
    phases.end("cross_encoder_inference")

    with_ce = base + ["cross_encoder"]
    _record_fit("weighted_cross_encoder_lambdarank_regressor", blend.queries)
    weighted_ce = fusion.WeightedFusion.from_params(fusion_params).fit(
        {n: _floored(blend.scores[n]) for n in with_ce}, blend_gains, fusion_params.folds, params.seed,
        fusion_params.metric_k)
    result.add("weighted+cross_encoder", "fusion", ranking_metrics(
        rank_candidates(test.candidates, weighted_ce.score({n: _floored(test.scores[n]) for n in with_ce})),
        test.gains))
    extra["weighted_cross_encoder_fusion"] = weighted_ce.to_dict()

    priors = item_priors(data, fit)
    blend_features, names = _stack_features(blend, blend_stage_one, data, priors)
    test_features, _ = _stack_features(test, test_stage_one, data, priors)
    stack = fusion.LambdaRankFusion(fusion_params.lambdarank, fusion_params.metric_k).fit(
        blend_features, names, blend_gains, seed=params.seed)
    stack_scores = stack.score(test_features)

    blend_table, table_names, blend_rel = _relevance_features(blend, data, priors)
    test_table, _, _ = _relevance_features(test, data, priors)
    regressor = _fit_relevance_regressor(blend_table, blend_rel, params.seed)
    stacked_rmse = _rmse(regressor.predict(test_table), test_rel)
    result.add("lambdarank_stack", "fusion", {**ranking_metrics(rank_candidates(test.candidates, stack_scores),
                                                                test.gains), "rmse": stacked_rmse})
    extra["lambdarank_feature_importance"] = stack.feature_importance()
    extra["relevance_regressor_features"] = table_names
    phases.end("stack")

    train_mean = float(data.judgments[data.judgments["query"].isin(np.concatenate([fit, data.splits["blend"]]))]["relevance"].mean())
    extra["rmse"] = {"predict_training_mean": round(_rmse(np.full(len(test_rel), train_mean), test_rel), 5),
                     "cross_encoder": round(ce_rmse, 5), "stacked_regressor": round(stacked_rmse, 5)}
    bm25_ndcg = result.methods["bm25"]["ndcg@10"]
    best = max((n for n, m in result.methods.items() if m["kind"] == "fusion"), key=lambda n: result.methods[n]["ndcg@10"])
    extra["best_fusion"] = {"name": best, "ndcg@10": result.methods[best]["ndcg@10"],
                            "vs_bm25": round(result.methods[best]["ndcg@10"] / bm25_ndcg, 4) if bm25_ndcg else None}
    return extra
