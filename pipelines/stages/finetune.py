"""Finetune: the MiniLM bi-encoder and the cross-encoder re-ranker, trained on the training split only.

bi-encoder (contrastive, in-batch + mined hard negatives), one model for both tasks:
  search          judged (query -> item text) pairs at least finetune.min_positive_relevance relevant, each
                  with one BM25-mined hard negative: an item of the query's BM25 top it was not judged on;
  recommendation  (text of the latest history items -> next item text) over each user's training
                  sequence, at most finetune.max_recommend_pairs of them (seeded sample).
cross-encoder: every judged training pair (gain = relevance, relevance = relevance) plus
  finetune.cross_encoder_negatives unjudged BM25 items per pair (gain 0, no relevance).

Writes models/finetune/bi_encoder/ (a sentence-transformers folder, read by recall's dense component
through text.dense.model_path) and models/finetune/cross_encoder/ (read through text.cross_encoder.model_path),
and metrics (examples/s, steps, loss) to metrics/finetune.json. Resumable work lives under
finetune.checkpoint_dir, keyed by a fingerprint of the examples and the params, and is removed once done.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.data.dataset import load_training_data
from pipelines.models.rankers.bm25 import BM25
from pipelines.models.training import (
    FinetuneParams,
    TrainResult,
    mine_negatives,
    recommendation_pairs,
    search_pairs,
    train_bi_encoder,
    train_cross_encoder,
)

log = get_logger(__name__)

BI_ENCODER, CROSS_ENCODER = "bi_encoder", "cross_encoder"
# Outside the fingerprint: changing them must not make an interrupted run start over.
NOT_IN_FINGERPRINT = {"resume", "checkpoint_every", "checkpoint_dir", "log_every", "device"}


@dataclass
class SearchQueries:
    """Training queries by position: their text, their judgments and their BM25 top list."""

    texts: list[str]
    judgments: pd.DataFrame  # query (position), item, relevance
    judged: list[set[int]]
    bm25_top: np.ndarray  # [n_queries, hard_negative_depth]


@dataclass
class Examples:
    bi_encoder: pd.DataFrame  # anchor, positive, negative ("" = in-batch negatives only), task
    cross_encoder: pd.DataFrame  # query, text, gain, relevance (NaN for unjudged negatives)
    counts: dict


# ---------------------------------------------------------------- examples

def search_queries(data: TrainingData, settings: Settings, depth: int) -> SearchQueries:
    """One position per training query_id; BM25 (fitted on the item texts only) ranks each query's candidates."""
    judgments = data.judgments if data.judgments is not None else pd.DataFrame(
        columns=["query_id", "query", "item", "relevance"])
    query_ids, positions = np.unique(judgments["query_id"].astype(str).to_numpy(), return_inverse=True)
    texts = pd.Series(judgments["query"].to_numpy()).groupby(positions).first().tolist() if len(query_ids) else []
    table = pd.DataFrame({"query": positions, "item": judgments["item"].to_numpy(dtype=np.int64),
                          "relevance": judgments["relevance"].to_numpy(dtype=float)})
    judged = [set() for _ in query_ids]
    for query, item in zip(table["query"], table["item"]):
        judged[query].add(int(item))
    bm25_top = np.zeros((0, depth), dtype=np.int64)
    if texts:
        bm25 = BM25(settings.text.bm25).fit(TrainingData(data.items))
        bm25_top = bm25.retrieve([Request(query=text) for text in texts], depth)[0]
    return SearchQueries(texts, table, judged, bm25_top)


def search_bi_encoder_examples(queries: SearchQueries, texts: list[str], params: FinetuneParams) -> pd.DataFrame:
    pairs = search_pairs(queries.judgments, queries.texts, texts, params.min_positive_relevance)
    negatives = [""] * len(pairs)
    if params.hard_negatives and len(pairs):
        mined = mine_negatives(queries.bm25_top, queries.judged, pairs["query"].to_numpy(), params.seed)
        negatives = [texts[item] if item >= 0 else "" for item in mined[:, 0]]
    return pd.DataFrame({"anchor": pairs["anchor"], "positive": pairs["positive"], "negative": negatives,
                         "task": "search"})


def recommendation_examples(data: TrainingData, texts: list[str], params: FinetuneParams) -> pd.DataFrame:
    """(history text -> next item text) over each user's training sequence, repeats of the same item merged."""
    interactions = data.interactions
    if interactions is None or interactions.empty or not params.max_recommend_pairs:
        return pd.DataFrame(columns=["anchor", "positive", "negative", "task"])
    ordered = interactions.sort_values(["user", "timestamp"], kind="stable")
    repeated = (ordered["user"] == ordered["user"].shift()) & (ordered["item"] == ordered["item"].shift())
    pairs = recommendation_pairs(ordered[~repeated][["user", "item"]], texts, params.recommend_history_items)
    if len(pairs) > params.max_recommend_pairs:
        chosen = np.random.default_rng(params.seed).choice(len(pairs), params.max_recommend_pairs, replace=False)
        pairs = pairs.iloc[np.sort(chosen)].reset_index(drop=True)
    return pairs.assign(negative="", task="recommend")


def cross_encoder_examples(queries: SearchQueries, texts: list[str], params: FinetuneParams) -> pd.DataFrame:
    judged = queries.judgments
    frames = [pd.DataFrame({"query": [queries.texts[q] for q in judged["query"]],
                            "text": [texts[i] for i in judged["item"]],
                            "gain": judged["relevance"].to_numpy(), "relevance": judged["relevance"].to_numpy()})]
    if params.cross_encoder_negatives and len(judged):
        rows = judged["query"].to_numpy()
        negatives = mine_negatives(queries.bm25_top, queries.judged, rows, params.seed + 1,
                                   params.cross_encoder_negatives)
        keep = negatives >= 0
        query_of = np.repeat(rows[:, None], negatives.shape[1], axis=1)[keep]
        frames.append(pd.DataFrame({"query": [queries.texts[q] for q in query_of],
                                    "text": [texts[i] for i in negatives[keep]], "gain": 0.0, "relevance": np.nan}))
    return pd.concat(frames, ignore_index=True)


def build_examples(data: TrainingData, settings: Settings) -> Examples:
    """Both models' training examples, from what `data` holds (the stage passes the training split only)."""
    params = settings.finetune
    bi_texts = list(getattr(data.items, settings.text.dense.field))
    cross_texts = list(getattr(data.items, settings.text.cross_encoder.field))
    queries = search_queries(data, settings, params.hard_negative_depth)
    search = search_bi_encoder_examples(queries, bi_texts, params)
    recommend = recommendation_examples(data, bi_texts, params)
    cross = cross_encoder_examples(queries, cross_texts, params)
    counts = {"search_queries": len(queries.texts), "search_pairs": len(search),
              "hard_negatives": int((search["negative"] != "").sum()), "recommend_pairs": len(recommend),
              "cross_encoder_judged_pairs": int(cross["relevance"].notna().sum()),
              "cross_encoder_negatives": int(cross["relevance"].isna().sum())}
    return Examples(pd.concat([search, recommend], ignore_index=True), cross, counts)


# ---------------------------------------------------------------- training

def fingerprint(examples: pd.DataFrame, params: FinetuneParams) -> str:
    """Same examples and params -> same key, so only a checkpoint of this very run is resumed."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(examples, index=False).to_numpy().tobytes())
    digest.update(json.dumps(params.model_dump(exclude=NOT_IN_FINGERPRINT), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _train_into(kind: str, examples: pd.DataFrame, params: FinetuneParams, target: Path,
                trainer: Callable[..., TrainResult], columns: list[str], save_base: Callable[[Path], None]) -> dict:
    """Train in a work folder (resumable), then copy the final model to target; the base model when too few examples."""
    batch_size = getattr(params, kind).batch_size
    if len(examples) < batch_size:
        log.warning("too few examples to fine-tune: the base model is kept",
                    extra={"model": kind, "examples": len(examples), "batch_size": batch_size})
        save_base(target)
        return {"trained": False, "training_rows": len(examples)}
    key = fingerprint(examples[columns], params)
    with tempfile.TemporaryDirectory(prefix=f"shopfusion-{kind}-") as temporary:
        root = Path(params.checkpoint_dir) / kind if params.checkpoint_dir else Path(temporary)
        for stale in (root.iterdir() if root.exists() else []):
            if stale.name != key:  # checkpoints of other data or params can never be resumed
                shutil.rmtree(stale, ignore_errors=True)
        work = root / key
        result = trainer(examples[columns], work, params)
        shutil.copytree(result.model_path, target)
        shutil.rmtree(work, ignore_errors=True)
    return {"trained": True, "training_rows": len(examples), **result.as_dict(), "model_path": str(target)}


def _save_base_bi_encoder(target: Path) -> None:
    from pipelines.models.rankers.dense import load_encoder

    load_encoder(None, 64, device="cpu").save(str(target))


def _save_base_cross_encoder(target: Path) -> None:
    from pipelines.models.rankers.cross_encoder import load_cross_encoder

    model, tokenizer = load_cross_encoder(None)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))


def finetune(features_dir: Path, out_dir: Path, settings: Settings, metrics_path: Path | None = None) -> dict:
    """Fine-tune both text models on the training split; write them under out_dir and the metrics."""
    started = time.perf_counter()
    params = settings.finetune
    data = load_training_data(features_dir, ("train",))
    examples = build_examples(data, settings)
    log.info("finetune examples", extra=examples.counts)
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    summary = {**examples.counts}
    summary[BI_ENCODER] = _train_into(BI_ENCODER, examples.bi_encoder, params, out_dir / BI_ENCODER, train_bi_encoder,
                                      ["anchor", "positive", "negative"], _save_base_bi_encoder)
    summary[CROSS_ENCODER] = _train_into(CROSS_ENCODER, examples.cross_encoder, params, out_dir / CROSS_ENCODER,
                                         train_cross_encoder, ["query", "text", "gain", "relevance"],
                                         _save_base_cross_encoder)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if metrics_path:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("finetune done", extra={"seconds": summary["seconds"]})
    return summary
