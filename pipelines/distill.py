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
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import Settings, section
from pipelines.errors import DataError
from pipelines.logs import get_logger

log = get_logger(__name__)

MODEL_FOLDER = "model"
STUDENT_FILE = "student.json"
SCRIPTED_FILE = "encoder.pt"
DENSE_SUBFOLDER = ("dense", "dense")  # recall saves the dense component under models/recall/dense/dense/
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


class DistillParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: list[int] = [0, 2, 4, 5]  # teacher layers the student keeps, in order (the last one matters most)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    loss: str = Field("cosine", pattern="^(cosine|mse)$")
    rank_weight: float = Field(1.0, ge=0)  # weight of the ranking term: KL of teacher and student scores over items
    rank_items: int = Field(1024, ge=1)  # teacher item embeddings sampled each step for the ranking term
    rank_hard_items: int = Field(32, ge=0)  # plus each batch text's top items by teacher score: the head NDCG sees
    rank_temperature: float = Field(0.05, gt=0)
    max_seq_length: int = Field(32, ge=4)  # of the student, in training and serving
    item_fields: list[str] = ["title"]  # item table columns (title, text) whose values join the training pool
    max_item_texts: int = Field(2000, ge=0)  # catalog texts sampled into the training pool
    freeze_embeddings: bool = True  # the word-embedding table (most weights) stays the teacher's: faster steps
    teacher_batch_size: int = Field(128, ge=1)
    quantize: bool = True  # int8 dynamic quantization of nn.Linear at load
    quantize_per_channel: bool = True  # an int8 scale per output row of each weight, not one per matrix: closer
    fp32_linears: int = Field(1, ge=0)  # this many linears stay fp32: those int8 harms most (calibration_texts)
    calibration_texts: int = Field(256, ge=1)  # training texts on which that harm is measured
    trace: bool = True  # TorchScript trace at load: removes most per-request Python overhead
    seed: int = 0
    threads: int = Field(2, ge=1)  # torch threads while training
    device: str = "auto"  # auto | cuda | cpu
    eval_split: str = Field("valid", pattern="^(train|valid)$")  # NDCG and speed measured on these queries
    timing_queries: int = Field(200, ge=1)  # queries timed one by one at batch size 1
    timing_repeats: int = Field(3, ge=1)


def distill_params(settings: Settings) -> DistillParams:
    """params.yaml distill."""
    return section(settings, "distill", DistillParams)


# ---------------------------------------------------------------- the encoders

class QueryEncoder:
    """Texts -> L2-normalized float32 embeddings through a transformers encoder and mean pooling.

    model None: `forward` is a loaded TorchScript encoder, `tokenize` and `dimension` are given."""

    def __init__(self, model, tokenizer, max_seq_length: int, name: str, batch_size: int = 64, forward=None,
                 tokenize=None, dimension: int | None = None):
        self.model = model.eval() if model is not None else None
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.name = name
        self.batch_size = batch_size
        self.dimension = int(model.config.hidden_size) if model is not None else int(dimension)
        # (input_ids, attention_mask) -> last hidden states; a TorchScript trace of the model when given
        self.forward = forward or (lambda ids, mask: self.model(input_ids=ids, attention_mask=mask).last_hidden_state)
        self.tokenize = tokenize or self._tokenize  # texts -> (input_ids, attention_mask), padded and truncated

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths pad less
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            out[rows] = self._encode_batch([texts[row] for row in rows])
        return out

    def _tokenize(self, texts: list[str]):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                               return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        ids, mask = self.tokenize(texts)
        with torch.inference_mode():
            vectors = mean_pool(self.forward(ids, mask), mask)
            return torch.nn.functional.normalize(vectors, dim=-1).numpy()


def mean_pool(hidden, attention_mask):
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"{path}: not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).exists():
            return model_dir / name
    raise DataError(f"{model_dir / 'model.safetensors'}: not found")


def _load_transformer(model_dir: Path):
    """(model, tokenizer) of a transformers folder, offline; any damage is a DataError naming the file."""
    from transformers import AutoModel, AutoTokenizer

    _quiet_transformers()
    _read_json(model_dir / "config.json")
    weights = _weights_file(model_dir)
    if not (model_dir / "tokenizer.json").exists() and not (model_dir / "vocab.txt").exists():
        raise DataError(f"{model_dir / 'tokenizer.json'}: not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure means a damaged folder
        raise DataError(f"{model_dir / 'tokenizer.json'}: cannot load the tokenizer ({exc.__class__.__name__})") from None
    try:
        model, info = AutoModel.from_pretrained(str(model_dir), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign weights
        raise DataError(f"{weights}: cannot load the weights ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    missing = [key for key in info.get("missing_keys", []) if "pooler" not in key]
    if missing:
        raise DataError(f"{weights}: {len(missing)} weights missing, e.g. {missing[0]}")
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # the [CLS] pooler is unused by mean pooling: one matmul less a request
    return model.eval(), tokenizer


def _check_mean_pooling(model_dir: Path) -> None:
    pooling = model_dir / "1_Pooling" / "config.json"
    if not pooling.exists():
        return
    config = _read_json(pooling)  # sentence-transformers >= 6 writes pooling_mode, older ones boolean flags
    if config.get("pooling_mode") != "mean" and not config.get("pooling_mode_mean_tokens", False):
        raise DataError(f"{pooling}: only mean pooling is supported by the query encoder")


def _quantize(model, per_channel: bool = True, keep_fp32: Sequence[str] = ()):
    """int8 dynamic quantization of the nn.Linear layers but those named in keep_fp32.

    per_channel: a weight scale per output row (a per-matrix scale is set by the matrix's largest weight and
    rounds the rest coarsely; same speed on CPU)."""
    import torch
    from torch.ao import quantization

    qconfig = quantization.per_channel_dynamic_qconfig if per_channel else quantization.default_dynamic_qconfig
    spec = {name: qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name not in set(keep_fp32)}
    with warnings.catch_warnings():  # torch.ao's deprecation notices, not actionable at load time
        warnings.simplefilter("ignore")
        return quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def int8_sensitive_linears(model, tokenizer, texts: Sequence[str], max_seq_length: int, count: int,
                           per_channel: bool = True) -> list[str]:
    """The `count` nn.Linear layers whose int8 version alone moves the model's embeddings of `texts` most
    (mean 1 - cosine to the fp32 embeddings), most harmful first.

    Dynamic quantization rounds a linear's input with one scale per call: a linear reading activations with
    outliers (in BERT-like encoders, typically an early layer's FFN output, reading GELU outputs) loses much
    more than the others; keeping just that one in fp32 recovers most of the int8 loss for little speed.
    """
    import torch

    if count <= 0 or not texts:
        return []
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    reference = QueryEncoder(model, tokenizer, max_seq_length, "fp32").encode(texts)
    harm = {}
    for name in names:
        alone = _quantize(model, per_channel, keep_fp32=[other for other in names if other != name])
        vectors = QueryEncoder(alone, tokenizer, max_seq_length, "int8").encode(texts)
        harm[name] = float(np.mean(1 - (vectors * reference).sum(axis=1)))
    return sorted(names, key=lambda name: -harm[name])[:count]


def _last_hidden_module(model):
    """The model as a module of (input_ids, attention_mask) only, the form torch.jit.trace records."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden().eval()


def _trace(model, tokenizer):
    """A TorchScript trace of the encoder: most of a short query's latency is Python dispatch, which it removes.

    Traced on a padded batch so the attention-mask path is the recorded one; it holds for any batch
    and length (checked by the tests against the eager model). None when tracing fails.
    """
    import torch

    example = tokenizer(["a query", "a longer example query text"], padding=True, return_tensors="pt")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and "might be incorrect" notices; checked by tests
            return torch.jit.trace(_last_hidden_module(model), (example["input_ids"], example["attention_mask"]),
                                   check_trace=False, strict=False)
    except Exception as exc:  # noqa: BLE001 - the eager model still serves, only slower
        log.warning("tracing failed, serving the eager model", extra={"error": exc.__class__.__name__})
        return None


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def dense_folder(recall_dir: Path) -> Path:
    return Path(recall_dir).joinpath(*DENSE_SUBFOLDER)


def load_teacher_encoder(dense_dir: Path, threads: int | None = None) -> QueryEncoder:
    """The fp32 teacher: the dense component's folder (model/, params.json) as saved by recall."""
    dense_dir = Path(dense_dir)
    max_seq_length = int(_read_json(dense_dir / "params.json").get("max_seq_length", 64))
    _set_threads(threads)
    _check_mean_pooling(dense_dir / MODEL_FOLDER)
    model, tokenizer = _load_transformer(dense_dir / MODEL_FOLDER)
    return QueryEncoder(model, tokenizer, max_seq_length, name="teacher")


def load_query_encoder(folder: Path, quantize: bool = True, threads: int | None = None,
                       trace: bool = True, scripted: bool = True) -> QueryEncoder:
    """The student of a distill output folder, int8-quantized unless quantize=False, TorchScript-traced unless
    trace=False. threads: torch's thread count for this process (None leaves it). Weight scales as student.json's
    weight_scales says (per-channel, or per-tensor for folders written before it existed), and the linears
    named in its fp32_linears left in fp32. Quantized and traced, from encoder.pt when the folder has it
    (scripted=False: built from model/ again)."""
    folder = Path(folder)
    meta = _read_json(folder / STUDENT_FILE)
    if "max_seq_length" not in meta or "layers" not in meta:
        raise DataError(f"{folder / STUDENT_FILE}: missing max_seq_length or layers")
    _set_threads(threads)
    if quantize and trace and scripted and (folder / SCRIPTED_FILE).exists():
        return _load_scripted(folder, meta)
    model, tokenizer = _load_transformer(folder / MODEL_FOLDER)
    if model.config.num_hidden_layers != len(meta["layers"]):
        raise DataError(f"{folder / MODEL_FOLDER / 'config.json'}: {model.config.num_hidden_layers} layers, "
                        f"{folder / STUDENT_FILE} says {len(meta['layers'])}")
    if quantize:
        model = _quantize(model, per_channel=meta.get("weight_scales") == "per-channel",
                          keep_fp32=meta.get("fp32_linears", []))
    traced = _trace(model, tokenizer) if trace else None
    return QueryEncoder(model, tokenizer, int(meta["max_seq_length"]), name="student-int8" if quantize else "student",
                        forward=traced)


def export_scripted(folder: Path) -> str | None:
    """Saves the quantized, traced student as encoder.pt (TorchScript); its file name, or None when the
    trace failed (the service then quantizes and traces model/ at start, as before)."""
    import torch

    folder = Path(folder)
    encoder = load_query_encoder(folder, scripted=False)
    if not isinstance(encoder.forward, torch.jit.ScriptModule):
        return None
    torch.jit.save(encoder.forward, str(folder / SCRIPTED_FILE))
    return SCRIPTED_FILE


def _load_scripted(folder: Path, meta: dict) -> QueryEncoder:
    import torch

    path = folder / SCRIPTED_FILE
    if "dimension" not in meta:
        raise DataError(f"{folder / STUDENT_FILE}: missing dimension")
    try:
        forward = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise DataError(f"{path}: cannot load the TorchScript encoder ({exc.__class__.__name__})") from None
    tokenize = fast_tokenizer(folder / MODEL_FOLDER, int(meta["max_seq_length"]))
    return QueryEncoder(None, None, int(meta["max_seq_length"]), name="student-int8", forward=forward.eval(),
                        tokenize=tokenize, dimension=int(meta["dimension"]))


def fast_tokenizer(model_dir: Path, max_seq_length: int):
    """texts -> (input_ids, attention_mask) tensors through the `tokenizers` library alone, padded to the
    longest text and truncated as the transformers tokenizer of model_dir does (checked by the tests)."""
    import torch
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise DataError(f"{path}: not found")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file
        raise DataError(f"{path}: cannot load the tokenizer ({exc.__class__.__name__})") from None
    config = _read_json(model_dir / "tokenizer_config.json") if (model_dir / "tokenizer_config.json").exists() else {}
    pad_token = config.get("pad_token") or "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise DataError(f"{path}: the padding token {pad_token!r} is not in the vocabulary")
    tokenizer.enable_truncation(max_seq_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def tokenize(texts: list[str]):
        encodings = tokenizer.encode_batch(list(texts))
        return (torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long),
                torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.long))

    return tokenize


# ---------------------------------------------------------------- comparing teacher and student

def dense_ndcg(query_vectors: np.ndarray, gains: Sequence[dict[int, float]], item_embeddings: np.ndarray,
               k: int = 10) -> float:
    """Mean NDCG@k of ranking every item by inner product with each query vector."""
    from pipelines.metrics import ndcg_at_k

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    from pipelines.features import search_requests

    requests, gains = search_requests(features_dir, split)
    return [request.query for request in requests], gains


def distill(recall_dir: Path, features_dir: Path, out_dir: Path, settings: Settings) -> dict:
    """Train the student on training-split texts, save it, and compare it with the teacher on eval_split."""
    import torch

    from pipelines.device import pick_device, seed_everything

    params = distill_params(settings)
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
