"""The runtime query encoder: the dense teacher or the distilled, int8-quantized student, loaded for inference.

The service loads it without transformers when the student was saved as TorchScript (encoder.pt).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger

log = get_logger(__name__)


MODEL_FOLDER = "model"


STUDENT_FILE = "student.json"


SCRIPTED_FILE = "encoder.pt"


DENSE_SUBFOLDER = ("dense", "dense")  # recall saves the dense component under models/recall/dense/dense/


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


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


