"""A distilled, int8-quantized query encoder for serving.

The student is the teacher's transformer (the dense recall component's bi-encoder) with only some
of its layers, initialised from the teacher's weights and trained to reproduce the teacher's
normalized embeddings of query-like texts: the training split's queries and the catalog's titles
and texts. Item embeddings stay the teacher's (precomputed by recall), so the student only has to
land queries in the same space. At load time the nn.Linear layers are quantized to int8 (torch dynamic
quantization, a weight scale per output row), but for the few (params: fp32_linears) whose int8 version
moved the student's embeddings most on calibration texts: in MiniLM, layer 0's FFN output, which reads
GELU outputs with outliers. Both encoders run through plain `transformers` + mean pooling, not
sentence-transformers, which keeps the service's import and cold start short.

Layout of a student folder: `model/` (fp32 transformer and tokenizer, loadable offline, also a
sentence-transformers folder), `student.json` (layers kept, quantization, max_seq_length, training
figures) and, when quantized and traced, `encoder.pt`: the int8 traced encoder saved as TorchScript, which
the service loads with torch and `tokenizers` alone (no transformers import, no quantizing or tracing at
start: ~3.5 s less per worker on 2 cores).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.params import DistillParams
from pipelines.models.student import (
    MODEL_FOLDER,
    ST_FILES,
    STUDENT_FILE,
    QueryEncoder,
    dense_folder,
    export_scripted,
    int8_sensitive_linears,
    load_query_encoder,
    load_teacher_encoder,
    mean_pool,
)

log = get_logger(__name__)


# ---------------------------------------------------------------- the encoders


# ---------------------------------------------------------------- comparing teacher and student

def dense_ndcg(query_vectors: np.ndarray, gains: Sequence[dict[int, float]], item_embeddings: np.ndarray,
               k: int = 10) -> float:
    """Mean NDCG@k of ranking every item by inner product with each query vector."""
    from pipelines.core.metrics import ndcg_at_k

    scores = query_vectors @ np.asarray(item_embeddings, dtype=np.float32).T
    depth = min(k, scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    ordered = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    return float(np.mean([ndcg_at_k(row.tolist(), judged, k) for row, judged in zip(ordered, gains)]))


def time_per_request(encoders: Sequence[QueryEncoder], queries: Sequence[str], repeats: int) -> list[float]:
    """Median ms of encode([query]) per encoder: one thread, the encoders interleaved query by query."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    samples: list[list[float]] = [[] for _ in encoders]
    try:
        for encoder in encoders:  # warm-up: first calls allocate
            encoder.encode(list(queries[:5]))
        for repeat in range(repeats):
            order = list(range(len(encoders)))[::(-1 if repeat % 2 else 1)]  # alternate who goes first
            for query in queries:
                for which in order:
                    started = time.perf_counter()
                    encoders[which].encode([query])
                    samples[which].append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(threads)
    return [statistics.median(times) for times in samples]


def compare_encoders(teacher: QueryEncoder, student: QueryEncoder, queries: list[str],
                     gains: list[dict[int, float]], item_embeddings: np.ndarray, k: int = 10,
                     timing_queries: int = 200, repeats: int = 3) -> dict:
    """Per-request speed (batch size 1, one thread) and dense-alone NDCG@k of teacher and student."""
    if len(queries) != len(gains) or not queries:
        raise ValueError(f"need as many gains as queries, and at least one ({len(queries)} vs {len(gains)})")
    teacher_ms, student_ms = time_per_request([teacher, student], queries[:timing_queries], repeats)
    teacher_ndcg = dense_ndcg(teacher.encode(queries), gains, item_embeddings, k)
    student_ndcg = dense_ndcg(student.encode(queries), gains, item_embeddings, k)
    loss_pct = 100.0 * (teacher_ndcg - student_ndcg) / teacher_ndcg if teacher_ndcg > 0 else 0.0
    return {"queries": len(queries), "timed_queries": min(len(queries), timing_queries),
            "teacher_ms": round(teacher_ms, 3), "student_ms": round(student_ms, 3),
            "speedup": round(teacher_ms / student_ms, 2), f"teacher_ndcg@{k}": round(teacher_ndcg, 4),
            f"student_ndcg@{k}": round(student_ndcg, 4), "ndcg_loss_pct": round(loss_pct, 2)}


# ---------------------------------------------------------------- training the student

def training_texts(features_dir: Path, item_fields: Sequence[str], max_item_texts: int, seed: int) -> list[str]:
    """Distinct query-like texts: the training split's queries, then sampled item titles and texts.

    Only judgments of split == "train" are read: validation and test queries never reach the student.
    """
    import pandas as pd  # here, not at the top: the service imports this module and never trains

    features_dir = Path(features_dir)
    judgments = pd.read_parquet(features_dir / "judgments.parquet", columns=["query", "split"])
    unknown = sorted(set(item_fields) - {"title", "text"})
    if unknown:
        raise DataError(f"params.yaml: distill.item_fields: unknown field(s) {', '.join(unknown)} (title, text)")
    items = pd.read_parquet(features_dir / "items.parquet", columns=list(item_fields) or ["title"])
    queries = judgments.loc[judgments["split"] == "train", "query"].astype(str).tolist()
    rng = np.random.default_rng(seed)
    item_texts = [text for column in item_fields for text in items[column].astype(str)]
    if len(item_texts) > max_item_texts:
        item_texts = [item_texts[row] for row in np.sort(rng.choice(len(item_texts), max_item_texts, replace=False))]
    texts = [text for text in dict.fromkeys(queries + item_texts) if text.strip()]
    if not texts:
        raise DataError(f"{features_dir}: no training queries or item texts to distill on")
    return texts


def make_student(teacher_model, layers: Sequence[int]):
    """A copy of the teacher keeping only the given layers (weights copied, not shared)."""
    import copy

    import torch

    n_layers = len(teacher_model.encoder.layer)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise DataError(f"params.yaml: distill.layers {list(layers)}: distinct indices in 0..{n_layers - 1} expected")
    student = copy.deepcopy(teacher_model)
    student.encoder.layer = torch.nn.ModuleList([student.encoder.layer[layer] for layer in layers])
    student.config.num_hidden_layers = len(layers)
    return student


def _teacher_targets(teacher: QueryEncoder, texts: list[str], batch_size: int, max_seq_length: int) -> np.ndarray:
    """The teacher's embeddings at the student's truncation, so a target is reachable from what the student reads."""
    truncated = QueryEncoder(teacher.model, teacher.tokenizer, max_seq_length, "teacher", batch_size)
    return truncated.encode(texts)


def _schedule(optimizer, steps: int, warmup_ratio: float):
    import torch

    warmup = max(1, int(steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loss(student_vectors, target_vectors, kind: str):
    if kind == "mse":
        import torch

        return torch.nn.functional.mse_loss(student_vectors, target_vectors) * student_vectors.shape[1]
    return (1 - (student_vectors * target_vectors).sum(dim=-1)).mean()


def _rank_loss(student_vectors, target_vectors, items, temperature: float):
    """KL(teacher || student) of the softmax over items' scores: what retrieval sees of a query vector."""
    import torch

    teacher_log = torch.log_softmax(target_vectors @ items.T / temperature, dim=-1)
    student_log = torch.log_softmax(student_vectors @ items.T / temperature, dim=-1)
    return torch.nn.functional.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), transient=True)


def train_student(student, tokenizer, texts: list[str], targets: np.ndarray, params: DistillParams,
                  device: str, item_embeddings: np.ndarray | None = None) -> list[float]:
    """Steps of AdamW on the cosine (or MSE) distance to the teacher's normalized embeddings, plus
    rank_weight times the ranking term over sampled item_embeddings when both are given."""
    import torch

    student.to(device).eval()  # no dropout: the target is the teacher's deterministic output
    student.embeddings.word_embeddings.weight.requires_grad_(not params.freeze_embeddings)
    trainable = [parameter for parameter in student.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    scheduler = _schedule(optimizer, params.steps, params.warmup_ratio)
    target_tensor = torch.from_numpy(targets)
    generator = np.random.default_rng(params.seed)
    order, cursor, losses = generator.permutation(len(texts)), 0, []
    items = torch.from_numpy(np.ascontiguousarray(item_embeddings, dtype=np.float32)).to(device) \
        if item_embeddings is not None and params.rank_weight > 0 else None
    with _progress() as progress:
        task = progress.add_task("distilling", total=params.steps, loss="-")
        for step in range(params.steps):
            if cursor + params.batch_size > len(order):
                order, cursor = generator.permutation(len(texts)), 0
            rows = order[cursor:cursor + params.batch_size]
            cursor += params.batch_size
            batch = tokenizer([texts[row] for row in rows], padding=True, truncation=True,
                              max_length=params.max_seq_length, return_tensors="pt").to(device)
            vectors = torch.nn.functional.normalize(mean_pool(student(**batch).last_hidden_state,
                                                              batch["attention_mask"]), dim=-1)
            wanted = target_tensor[rows].to(device)
            loss = _loss(vectors, wanted, params.loss)
            if items is not None:
                rows_sampled = generator.choice(len(items), min(params.rank_items, len(items)), replace=False)
                if params.rank_hard_items:
                    with torch.no_grad():
                        head = torch.topk(wanted @ items.T, min(params.rank_hard_items, len(items)), dim=-1).indices
                    rows_sampled = np.union1d(rows_sampled, head.flatten().cpu().numpy())
                sampled = items[torch.from_numpy(rows_sampled).to(device)]
                loss = loss + params.rank_weight * _rank_loss(vectors, wanted, sampled, params.rank_temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            progress.update(task, advance=1, loss=f"{losses[-1]:.4f}")
    student.to("cpu").eval()
    return losses


def save_student(student, tokenizer, teacher_model_dir: Path, out_dir: Path, meta: dict) -> None:
    """model/ as a transformers folder that is also a sentence-transformers one; student.json beside it."""
    model_dir = Path(out_dir) / MODEL_FOLDER
    student.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    for name in ST_FILES:
        if (teacher_model_dir / name).exists():
            shutil.copy2(teacher_model_dir / name, model_dir / name)
    for module_dir in teacher_model_dir.glob("[0-9]_*"):  # pooling and normalize modules
        if module_dir.is_dir():
            shutil.copytree(module_dir, model_dir / module_dir.name)
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.exists():
        config = json.loads(st_config.read_text(encoding="utf-8"))
        config["max_seq_length"] = meta["max_seq_length"]
        st_config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (Path(out_dir) / STUDENT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _search_queries(features_dir: Path, split: str) -> tuple[list[str], list[dict[int, float]]]:
    from pipelines.data.dataset import search_requests

    requests, gains = search_requests(features_dir, split)
    return [request.query for request in requests], gains


def distill(recall_dir: Path, features_dir: Path, out_dir: Path, settings: Settings) -> dict:
    """Train the student on training-split texts, save it, and compare it with the teacher on eval_split."""
    import torch

    from pipelines.core.device import pick_device, seed_everything

    params = settings.distill
    teacher_dir, out_dir = dense_folder(recall_dir), Path(out_dir)
    item_embeddings_path = teacher_dir / "item_embeddings.npy"
    if not item_embeddings_path.exists():
        raise DataError(f"{item_embeddings_path}: not found (run recall with the dense component first)")
    seed_everything(params.seed)
    torch.set_num_threads(params.threads)
    device = pick_device(params.device).device
    started = time.perf_counter()
    teacher = load_teacher_encoder(teacher_dir)
    texts = training_texts(features_dir, params.item_fields, params.max_item_texts, params.seed)
    targets = _teacher_targets(teacher, texts, params.teacher_batch_size, params.max_seq_length)
    teacher_seconds = time.perf_counter() - started
    student = make_student(teacher.model, params.layers)
    item_embeddings = np.load(item_embeddings_path)
    losses = train_student(student, teacher.tokenizer, texts, targets, params, device, item_embeddings)
    train_seconds = time.perf_counter() - started - teacher_seconds
    calibrating = time.perf_counter()
    sample = np.random.default_rng(params.seed).choice(len(texts), min(params.calibration_texts, len(texts)),
                                                        replace=False)
    kept_fp32 = int8_sensitive_linears(student, teacher.tokenizer, [texts[row] for row in np.sort(sample)],
                                       params.max_seq_length, params.fp32_linears,
                                       params.quantize_per_channel) if params.quantize else []
    calibration_seconds = time.perf_counter() - calibrating
    meta = {"teacher": str(teacher_dir / MODEL_FOLDER), "teacher_layers": len(teacher.model.encoder.layer),
            "layers": list(params.layers), "quantization": "int8-dynamic" if params.quantize else "none",
            "weight_scales": "per-channel" if params.quantize_per_channel else "per-tensor",
            "fp32_linears": kept_fp32,
            "traced": params.trace,
            "max_seq_length": params.max_seq_length, "pooling": "mean", "dimension": teacher.dimension,
            "training": {"texts": len(texts), "steps": params.steps, "batch_size": params.batch_size,
                         "loss": params.loss, "rank_weight": params.rank_weight, "first_loss": round(losses[0], 5),
                         "last_loss": round(float(np.mean(losses[-20:])), 5), "device": device,
                         "teacher_seconds": round(teacher_seconds, 1), "train_seconds": round(train_seconds, 1),
                         "calibration_seconds": round(calibration_seconds, 1)}}
    shutil.rmtree(out_dir, ignore_errors=True)
    save_student(student, teacher.tokenizer, teacher_dir / MODEL_FOLDER, out_dir, meta)
    meta["scripted"] = export_scripted(out_dir) if params.quantize and params.trace else None
    queries, gains = _search_queries(features_dir, params.eval_split)
    comparison = {}
    if queries:
        served = load_query_encoder(out_dir, quantize=params.quantize, trace=params.trace)
        comparison = compare_encoders(teacher, served, queries, gains, item_embeddings,
                                      timing_queries=params.timing_queries, repeats=params.timing_repeats)
    torch.set_num_threads(params.threads)
    summary = {"layers": list(params.layers), "quantization": meta["quantization"], **meta["training"],
               "split": params.eval_split, **comparison, "seconds": round(time.perf_counter() - started, 1)}
    meta["comparison"] = comparison
    (out_dir / STUDENT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("student distilled", extra=summary)
    return summary
