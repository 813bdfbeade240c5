"""Fine-tuning loops for the text models, in plain torch over the transformers modules.

- `train_bi_encoder`: contrastive fine-tuning of a sentence-transformers bi-encoder on
  (anchor, positive[, hard negative]) texts: (query -> item text) for search, (history text -> next
  item text) for recommendation. Loss: MultipleNegativesRanking, i.e. cross-entropy of each anchor
  against every positive and hard negative of the batch (in-batch negatives).
- `train_cross_encoder`: a two-output cross-encoder on (query, item text): output 0 regresses the
  ranking gain (judged relevance, 0 for mined unjudged negatives), output 1 regresses the graded
  relevance of judged pairs only (the rating prediction).

Both: full fine-tuning or LoRA (peft), CUDA + bf16 autocast when present else CPU, DDP under
`torchrun` (gloo on CPU, DistributedSampler, only rank 0 writes), resumable checkpoints (model,
optimizer, scheduler, step), fixed seeds, rich progress, and examples/s in the result.

Run alone or distributed:
    torchrun --nproc_per_node=2 -m pipelines.models.training bi-encoder --examples pairs.jsonl --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.config import load_settings
from pipelines.core.logs import get_logger
from pipelines.core.params import FinetuneParams, LoopParams, LoraParams
from pipelines.models.rankers.cross_encoder import load_cross_encoder

log = get_logger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FOLDER = "model"
LORA_TARGETS = ["query", "key", "value", "dense"]


@dataclass
class TrainResult:
    model_path: Path
    steps: int
    examples: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per log window
    device: str = "cpu"
    world_size: int = 1

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"model_path": str(self.model_path), "steps": self.steps, "examples": self.examples,
                "seconds": round(self.seconds, 1), "examples_per_second": round(self.examples_per_second, 1),
                "device": self.device, "world_size": self.world_size, "first_loss": self.losses[:1],
                "last_loss": self.losses[-1:]}


# ---------------------------------------------------------------- building examples

def search_pairs(judgments: pd.DataFrame, query_texts: Sequence[str], item_texts: Sequence[str],
                 min_relevance: float) -> pd.DataFrame:
    """Bi-encoder positives: (query text, item text) of judged pairs at least min_relevance relevant.

    judgments: query (a position into query_texts), item (a position into item_texts), relevance.
    """
    relevant = judgments[judgments["relevance"] >= min_relevance]
    return pd.DataFrame({"query": relevant["query"].to_numpy(), "item": relevant["item"].to_numpy(),
                         "anchor": [query_texts[q] for q in relevant["query"]],
                         "positive": [item_texts[i] for i in relevant["item"]]})


def recommendation_pairs(interactions: pd.DataFrame, item_texts: Sequence[str], history_items: int) -> pd.DataFrame:
    """(text of the latest history_items items -> next item text) for every next item of every user.

    interactions: user, item (positions), oldest first per user.
    """
    rows = []
    for _, items in interactions.groupby("user", sort=False)["item"]:
        sequence = items.to_list()
        for step in range(1, len(sequence)):
            history = sequence[max(0, step - history_items):step]
            rows.append((" ; ".join(item_texts[i] for i in reversed(history)), item_texts[sequence[step]]))
    return pd.DataFrame(rows, columns=["anchor", "positive"])


def mine_negatives(top_items: np.ndarray, judged: Sequence[set[int]], rows: np.ndarray,
                   seed: int, per_row: int = 1) -> np.ndarray:
    """For each example (its request row), per_row items of that request's top list it was not judged on.

    top_items: [n_requests, depth] ranked candidates (e.g. BM25's); judged[r]: items judged for request r.
    Returns [n_examples, per_row] item positions, -1 where the top list has nothing left.
    """
    generator = np.random.default_rng(seed)
    negatives = np.full((len(rows), per_row), -1, dtype=np.int64)
    for example, row in enumerate(rows):
        pool = [item for item in top_items[row] if item not in judged[row]]
        if pool:
            negatives[example] = generator.choice(pool, size=per_row, replace=len(pool) < per_row)
    return negatives


# ---------------------------------------------------------------- shared loop machinery

class _Rows:
    """A map-style dataset over the rows of a frame; the collate keeps plain Python values."""

    def __init__(self, frame: pd.DataFrame, columns: Sequence[str]):
        self.columns = list(columns)
        self.values = [frame[name].tolist() for name in self.columns]

    def __len__(self) -> int:
        return len(self.values[0])

    def __getitem__(self, index: int) -> tuple:
        return tuple(column[index] for column in self.values)


def _collate(batch: list[tuple]) -> list[list]:
    return [list(column) for column in zip(*batch)]


def _total_steps(loop: LoopParams, n_examples: int, world_size: int) -> tuple[int, int]:
    per_epoch = max(1, math.ceil(n_examples / (loop.batch_size * world_size)))
    total = loop.max_steps or max(1, math.ceil(loop.epochs * per_epoch))
    return total, per_epoch


def _apply_lora(model, lora: LoraParams):
    """Wrap a transformers model with LoRA adapters; only adapter (and head) weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=LORA_TARGETS,
                        modules_to_save=["classifier"] if hasattr(model, "classifier") else None)
    return get_peft_model(model, config)


def _freeze_word_embeddings(model) -> None:
    """The token embedding table is half of MiniLM's weights; its dense gradient and Adam update cost
    more CPU time than the transformer layers for short texts, for little gain in a short fine-tune."""
    for name, parameter in model.named_parameters():
        if "word_embeddings" in name:
            parameter.requires_grad_(False)


def _optimizer(model, loop: LoopParams, total_steps: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=loop.lr, weight_decay=loop.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(loop.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int) -> None:
    import torch

    temporary = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}, temporary)
    os.replace(temporary, path)


def _load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    return int(state["step"])


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=True)


def _run_loop(name: str, model, dataset: _Rows, loop: LoopParams, params: FinetuneParams, out_dir: Path,
              step_loss, save_model) -> TrainResult:
    """The loop both trainers share: sampler, DDP, autocast, checkpoints, progress and throughput.

    step_loss(model, batch) -> loss tensor; save_model(model, folder) writes the final model.
    """
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from pipelines.core.device import (
        autocast,
        init_distributed,
        pick_device,
        seed_everything,
    )

    info = pick_device(params.device)
    init_distributed(info)
    seed_everything(params.seed)
    if info.device == "cpu" and info.distributed:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(info.device)
    trained = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device != "cpu" else None)
    total_steps, per_epoch = _total_steps(loop, len(dataset), info.world_size)
    optimizer, scheduler = _optimizer(model, loop, total_steps)
    checkpoint = out_dir / CHECKPOINT_FILE
    step = _load_checkpoint(checkpoint, model, optimizer, scheduler) if params.resume and checkpoint.exists() else 0
    if step:
        log.info("resuming", extra={"loop": name, "step": step, "total_steps": total_steps})
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=params.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=loop.batch_size, sampler=sampler, collate_fn=_collate, drop_last=True)
    start_step, losses, window = step, [], []
    started = time.perf_counter()
    trained.train()
    with _progress(info.is_main) as progress:
        task = progress.add_task(name, total=total_steps, completed=step, loss="")
        while step < total_steps:
            epoch, skip = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            for index, batch in enumerate(loader):
                if index < skip:
                    continue  # resuming inside an epoch: the sampler replays the same order
                with autocast(info):
                    loss = step_loss(trained, batch, info.device)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window.append(float(loss.detach()))
                if len(window) == params.log_every or step == total_steps:
                    losses.append(float(np.mean(window)))
                    window = []
                    progress.update(task, loss=f"loss {losses[-1]:.4f}")
                progress.update(task, completed=step)
                if info.is_main and (step % params.checkpoint_every == 0 or step == total_steps):
                    _save_checkpoint(checkpoint, model, optimizer, scheduler, step)
                if step >= total_steps:
                    break
    seconds = time.perf_counter() - started
    examples = (step - start_step) * loop.batch_size * info.world_size
    folder = out_dir / MODEL_FOLDER
    if info.is_main:
        save_model(model, folder)
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()
    result = TrainResult(folder, step, examples, seconds, losses, info.device, info.world_size)
    log.info("training finished", extra={"loop": name, **result.as_dict()})
    return result


# ---------------------------------------------------------------- bi-encoder

def _bi_encoder_loss(scale: float):
    import torch
    import torch.nn.functional as F

    def loss(model, batch, device):
        anchors, positives = batch[0], batch[1]
        candidates = positives + [negative for negative in (batch[2] if len(batch) > 2 else []) if negative]
        encoder = model.module if hasattr(model, "module") else model
        # one forward pass for anchors and candidates together: DDP expects one forward per backward
        features = {key: value.to(device) if hasattr(value, "to") else value
                    for key, value in encoder.preprocess(anchors + candidates).items()}
        vectors = F.normalize(model(features)["sentence_embedding"].float(), dim=-1)
        anchor_vectors, candidate_vectors = vectors[:len(anchors)], vectors[len(anchors):]
        logits = scale * anchor_vectors @ candidate_vectors.T
        return F.cross_entropy(logits, torch.arange(len(anchors), device=logits.device))

    return loss


def load_bi_encoder(model_path: str | None, max_seq_length: int, lora: LoraParams):
    from pipelines.models.rankers.dense import load_encoder

    encoder = load_encoder(model_path, max_seq_length, device="cpu")
    if lora.enabled:
        encoder[0].auto_model = _apply_lora(encoder[0].auto_model, lora)
    return encoder


def _save_bi_encoder(encoder, folder: Path) -> None:
    transformer = encoder[0]
    if hasattr(transformer.auto_model, "merge_and_unload"):
        transformer.auto_model = transformer.auto_model.merge_and_unload()
    encoder.save(str(folder))


def train_bi_encoder(examples: pd.DataFrame, out_dir: Path, params: FinetuneParams,
                     model_path: str | None = None) -> TrainResult:
    """examples: anchor, positive[, negative] texts (an empty negative means none for that row)."""
    loop = params.bi_encoder
    from pipelines.core.device import seed_everything

    seed_everything(params.seed)
    encoder = load_bi_encoder(model_path, loop.max_seq_length, params.lora)
    if params.freeze_embeddings:
        _freeze_word_embeddings(encoder)
    for name, parameter in encoder.named_parameters():
        if ".pooler." in name:  # mean pooling never reads BERT's pooler: DDP requires every trainable weight used
            parameter.requires_grad_(False)
    columns = ["anchor", "positive"] + (["negative"] if "negative" in examples and params.hard_negatives else [])
    frame = examples.assign(negative=examples["negative"].fillna("")) if "negative" in columns else examples
    return _run_loop("bi-encoder", encoder, _Rows(frame, columns), loop, params, out_dir,
                     _bi_encoder_loss(params.mnrl_scale), _save_bi_encoder)


# ---------------------------------------------------------------- cross-encoder

def trainable_cross_encoder(model_path: str | None, lora: LoraParams | None = None):
    """The cross-encoder (rankers.cross_encoder.load_cross_encoder) with LoRA adapters when enabled."""
    model, tokenizer = load_cross_encoder(model_path)
    if lora is not None and lora.enabled:
        model = _apply_lora(model, lora)
    return model, tokenizer


def _cross_encoder_loss(tokenizer, max_seq_length: int):
    import torch

    def loss(model, batch, device):
        queries, texts, gains, relevances = batch
        features = tokenizer(queries, texts, truncation=True, max_length=max_seq_length, padding=True,
                             return_tensors="pt").to(device)
        outputs = model(**features).logits.float()
        gain = torch.tensor(gains, dtype=torch.float32, device=device)
        relevance = torch.tensor(relevances, dtype=torch.float32, device=device)
        judged = ~torch.isnan(relevance)
        gain_loss = torch.mean((outputs[:, 0] - gain) ** 2)
        relevance_loss = torch.mean((outputs[judged, 1] - relevance[judged]) ** 2) if judged.any() else 0.0 * gain_loss
        return gain_loss + relevance_loss

    return loss


def _cross_encoder_saver(tokenizer):
    def save(model, folder: Path) -> None:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    return save


def train_cross_encoder(examples: pd.DataFrame, out_dir: Path, params: FinetuneParams,
                        model_path: str | None = None) -> TrainResult:
    """examples: query, text, gain (ranking target), relevance (NaN for unjudged negatives)."""
    loop = params.cross_encoder
    from pipelines.core.device import seed_everything

    seed_everything(params.seed)
    model, tokenizer = trainable_cross_encoder(model_path, params.lora)
    if params.freeze_embeddings:
        _freeze_word_embeddings(model)
    frame = examples.assign(gain=examples["gain"].astype(float), relevance=examples["relevance"].astype(float))
    return _run_loop("cross-encoder", model, _Rows(frame, ["query", "text", "gain", "relevance"]), loop, params,
                     out_dir, _cross_encoder_loss(tokenizer, loop.max_seq_length), _cross_encoder_saver(tokenizer))


# ---------------------------------------------------------------- torchrun entry point

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fine-tune a text model (run alone or under torchrun).")
    parser.add_argument("kind", choices=["bi-encoder", "cross-encoder"])
    parser.add_argument("--examples", required=True, type=Path, help="JSON lines with the trainer's columns")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--model", default=None, help="starting model folder (default: MiniLM)")
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from pipelines.core import logs

    logs.configure(os.environ.get("SHOPFUSION_LOG_LEVEL", "INFO"))
    params = load_settings(args.params).finetune
    loop_name = "bi_encoder" if args.kind == "bi-encoder" else "cross_encoder"
    if args.max_steps:
        loop = getattr(params, loop_name).model_copy(update={"max_steps": args.max_steps})
        params = params.model_copy(update={loop_name: loop})
    examples = pd.read_json(args.examples, lines=True)
    trainer = train_bi_encoder if args.kind == "bi-encoder" else train_cross_encoder
    result = trainer(examples, args.out, params, args.model)
    if int(os.environ.get("RANK", 0)) == 0:
        (args.out / "train_result.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
