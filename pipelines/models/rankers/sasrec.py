"""SASRec-style sequential recommender: a causal transformer over each user's item sequence.

Item and learned position embeddings, `layers` post-norm transformer blocks with a causal mask,
and the item embedding reused as the output layer. Training predicts the next item at every
position of a sequence in one pass (the causal mask keeps each position blind to its future),
with a full softmax over all items ("ce") or a shared sampled softmax ("sampled"). Each epoch is
checkpointed; `fit` resumes a checkpoint of the same configuration and data, and stops early when
the validation NDCG@10 has not improved for `patience` epochs, keeping the best epoch's weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from pipelines.core.config import Settings
from pipelines.core.device import autocast, pick_device, seed_everything
from pipelines.core.items import Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.core.params import SASRecParams
from pipelines.models.rankers.base import Ranker, histories_key, memo_last
from pipelines.models.rankers.itemcf import user_sequences

log = get_logger(__name__)

PAD = 0  # item positions are shifted by one inside the model; 0 is padding
CHECKPOINT_FILE = "checkpoint.pt"
EVAL_K = 10
# Fields that decide when training stops or where it runs, not what one epoch computes:
# changing them keeps a checkpoint resumable.
NOT_IN_CHECKPOINT_KEY = {"epochs", "patience", "threads", "checkpoint_dir", "device", "eval_batch"}


class Block(nn.Module):
    """Post-norm transformer block: attention then feed-forward, each with dropout and a residual."""

    def __init__(self, params: SASRecParams):
        super().__init__()
        self.heads, self.dropout = params.heads, params.dropout
        self.qkv = nn.Linear(params.hidden, 3 * params.hidden)
        self.out = nn.Linear(params.hidden, params.hidden)
        self.norm_attention = nn.LayerNorm(params.hidden, eps=1e-12)
        self.feed_forward = nn.Sequential(nn.Linear(params.hidden, params.inner), nn.GELU(),
                                          nn.Linear(params.inner, params.hidden))
        self.norm_ff = nn.LayerNorm(params.hidden, eps=1e-12)
        self.drop = nn.Dropout(params.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                  dropout_p=self.dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, length, hidden)
        x = self.norm_attention(x + self.drop(self.out(attended)))
        return self.norm_ff(x + self.drop(self.feed_forward(x)))


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, params: SASRecParams):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, params.hidden, padding_idx=PAD)
        self.positions = nn.Embedding(params.max_len, params.hidden)
        self.norm = nn.LayerNorm(params.hidden, eps=1e-12)
        self.drop = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(Block(params) for _ in range(params.layers))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position of left-padded sequences [batch, length]."""
        length = sequences.shape[1]
        positions = torch.arange(self.positions.num_embeddings - length, self.positions.num_embeddings,
                                 device=sequences.device)
        x = self.drop(self.norm(self.items(sequences) + self.positions(positions)[None]))
        real = sequences != PAD
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        # A padding position may see itself, so no row is all masked (NaN); real positions never see padding.
        allowed = (causal[None] & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=sequences.device)[None]
        allowed = allowed[:, None]  # one mask for every head
        for block in self.blocks:
            x = block(x, allowed)
        return x

    def item_table(self) -> torch.Tensor:
        return self.items.weight[1:]


@dataclass
class Checkpoint:
    key: str
    epoch: int
    best_metric: float
    best_epoch: int
    bad_epochs: int
    history: list


def left_pad(sequences: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Rows of the last `length` items (already shifted by one), padded with 0 on the left."""
    padded = np.zeros((len(sequences), length), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tail = np.asarray(sequence[-length:], dtype=np.int64)
        if len(tail):
            padded[row, length - len(tail):] = tail
    return padded


def length_bucketed_batches(lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths, so each batch can be trimmed to its longest sequence."""
    order = rng.permutation(len(lengths))
    chunk = batch * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch] for i in range(0, len(part), batch))
    return [batches[i] for i in rng.permutation(len(batches))]


def ndcg_from_ranks(ranks: np.ndarray, k: int = EVAL_K) -> float:
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0))) if len(ranks) else 0.0


class SASRec(Ranker):
    name = "sasrec"

    def __init__(self, params: SASRecParams):
        self.params = params
        self.net: SASRecNet | None = None
        self.prior = np.zeros(0, dtype=np.float32)
        self.history: list[dict] = []
        self.epochs_run: list[int] = []  # epochs this process trained (a resumed fit skips the earlier ones)
        self.throughput = 0.0  # training sequences per second over this process's epochs
        self.resumed_from = 0  # epochs a checkpoint already held when fit started

    @classmethod
    def from_settings(cls, settings: Settings) -> "SASRec":
        return cls(settings.sasrec)

    # ---- training -------------------------------------------------------------------------
    def fit(self, data: TrainingData, validation: Sequence[tuple[Request, int]] | None = None,
            checkpoint_dir: Path | None = None) -> "SASRec":
        """Train on every user's sequence. Without `validation`, the last item of each user with
        three or more interactions (of a seeded `validation_fraction` of them) is held out for early
        stopping and not trained on."""
        params = self.params
        torch.set_num_threads(params.threads)
        seed_everything(params.seed)
        self.device = pick_device(params.device)
        self.n_items = len(data.items)
        sequences = [s for s in user_sequences(data.interactions) if len(s) > 0]
        if validation is None:
            eligible = [index for index, s in enumerate(sequences) if len(s) >= 3]
            size = max(1, round(len(eligible) * params.validation_fraction)) if eligible else 0
            chosen = set(np.random.default_rng(params.seed).choice(eligible, size, replace=False).tolist()) if size else set()
            validation = [(Request(history=tuple(s[:-1].tolist())), int(s[-1]))
                          for index, s in enumerate(sequences) if index in chosen]
            sequences = [s[:-1] if index in chosen else s for index, s in enumerate(sequences)]
        counts = np.bincount(np.concatenate(sequences), minlength=self.n_items) if sequences else np.zeros(self.n_items)
        self.prior = np.log1p(counts).astype(np.float32)
        trainable = [s + 1 for s in sequences if len(s) >= 2]
        inputs = torch.from_numpy(left_pad([s[:-1] for s in trainable], params.max_len))
        targets = torch.from_numpy(left_pad([s[1:] for s in trainable], params.max_len))
        lengths = np.minimum([len(s) - 1 for s in trainable], params.max_len)

        self.net = SASRecNet(self.n_items, params).to(self.device.device)
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        folder = Path(checkpoint_dir or params.checkpoint_dir) if (checkpoint_dir or params.checkpoint_dir) else None
        key = self._checkpoint_key(sequences)
        state, best_weights = self._resume(folder, key, optimizer) or (Checkpoint(key, 0, -1.0, 0, 0, []), None)
        self.resumed_from = state.epoch
        log.info("sasrec training", extra={"sequences": len(trainable), "items": self.n_items,
                                           "device": self.device.device, "resumed_at_epoch": state.epoch})
        trained_sequences, trained_seconds = 0, 0.0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[status]}"), transient=True) as progress:
            epochs_task = progress.add_task("sasrec epochs", total=params.epochs, completed=state.epoch, status="")
            while state.epoch < params.epochs and state.bad_epochs < params.patience:
                epoch = state.epoch + 1
                started = time.perf_counter()
                loss = self._train_epoch(inputs, targets, lengths, optimizer, epoch, progress)
                trained_seconds += time.perf_counter() - started
                trained_sequences += len(trainable)
                metric = self.validation_ndcg(validation)
                improved = metric > state.best_metric
                if improved:
                    best_weights = {name: tensor.detach().clone() for name, tensor in self.net.state_dict().items()}
                state = Checkpoint(key, epoch, max(metric, state.best_metric), epoch if improved else state.best_epoch,
                                   0 if improved else state.bad_epochs + 1,
                                   state.history + [{"epoch": epoch, "loss": round(loss, 5), "valid_ndcg@10": round(metric, 5)}])
                self.epochs_run.append(epoch)
                self._save_checkpoint(folder, state, optimizer, best_weights)
                progress.update(epochs_task, completed=epoch, status=f"loss {loss:.3f} valid ndcg@10 {metric:.4f}")
                log.info("sasrec epoch", extra=state.history[-1])
        if best_weights is not None:
            self.net.load_state_dict(best_weights)
        self.history = state.history
        self.throughput = trained_sequences / trained_seconds if trained_seconds else 0.0
        log.info("sasrec trained", extra={"best_epoch": state.best_epoch, "best_valid_ndcg@10": round(state.best_metric, 5),
                                          "sequences_per_second": round(self.throughput, 1)})
        return self

    def _train_epoch(self, inputs, targets, lengths, optimizer, epoch: int, progress: Progress) -> float:
        self.net.train()
        rng = np.random.default_rng(self.params.seed + epoch)
        batches = length_bucketed_batches(lengths, self.params.batch, rng)
        task = progress.add_task(f"epoch {epoch}", total=len(batches), status="")
        total, count = 0.0, 0
        for rows in batches:
            longest = int(lengths[rows].max())
            batch_inputs = inputs[rows, -longest:].to(self.device.device)
            batch_targets = targets[rows, -longest:].to(self.device.device)
            with autocast(self.device):
                hidden = self.net(batch_inputs)
                loss = self._loss(hidden, batch_targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            count += len(rows)
            progress.advance(task)
        progress.remove_task(task)
        return total / max(count, 1)

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        real = targets != PAD
        states, wanted = hidden[real], targets[real] - 1  # back to item positions
        table = self.net.item_table()
        if self.params.loss == "ce":
            return F.cross_entropy((states @ table.T).float(), wanted)
        negatives = torch.randint(0, self.n_items, (self.params.negatives,), device=states.device)
        positive = (states * table[wanted]).sum(-1, keepdim=True)
        negative = states @ table[negatives].T
        negative = negative.masked_fill(negatives[None] == wanted[:, None], float("-inf"))
        logits = torch.cat([positive, negative], dim=1).float()
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def validation_ndcg(self, validation: Sequence[tuple[Request, int]]) -> float:
        """NDCG@10 of the held-out items, ranked against all items, history items excluded."""
        if not validation:
            return 0.0
        requests = [request for request, _ in validation]
        wanted = np.array([item for _, item in validation])
        ranks = []
        for start in range(0, len(requests), self.params.eval_batch):
            scores = self.score_all(requests[start:start + self.params.eval_batch]).copy()
            batch_wanted = wanted[start:start + self.params.eval_batch]
            target = scores[np.arange(len(scores)), batch_wanted].copy()
            for row, request in enumerate(requests[start:start + self.params.eval_batch]):
                scores[row, list(request.history)] = -np.inf
            ranks.append((scores > target[:, None]).sum(axis=1))
        return ndcg_from_ranks(np.concatenate(ranks))

    # ---- checkpoints ----------------------------------------------------------------------
    def _checkpoint_key(self, sequences: list[np.ndarray]) -> str:
        config = {k: v for k, v in self.params.model_dump().items() if k not in NOT_IN_CHECKPOINT_KEY}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        digest.update(str(self.n_items).encode())
        for sequence in sequences:
            digest.update(np.asarray(sequence, dtype=np.int64).tobytes())
            digest.update(b"|")
        return digest.hexdigest()[:16]

    def _resume(self, folder: Path | None, key: str, optimizer) -> tuple[Checkpoint, dict] | None:
        """The saved progress and best weights, with model, optimizer and RNG restored; None to start afresh."""
        path = folder / CHECKPOINT_FILE if folder else None
        if path is None or not path.exists():
            return None
        saved = torch.load(path, map_location=self.device.device, weights_only=False)
        if saved["state"]["key"] != key:
            log.info("sasrec checkpoint ignored: other config or data", extra={"folder": str(folder)})
            return None
        self.net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("sasrec resumed", extra={"folder": str(folder), "epoch": saved["state"]["epoch"]})
        return Checkpoint(**saved["state"]), saved["best_model"]

    def _save_checkpoint(self, folder: Path | None, state: Checkpoint, optimizer, best_weights) -> None:
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / (CHECKPOINT_FILE + ".partial")
        torch.save({"state": state.__dict__, "model": self.net.state_dict(), "optimizer": optimizer.state_dict(),
                    "best_model": best_weights, "torch_rng": torch.get_rng_state()}, partial)
        partial.replace(folder / CHECKPOINT_FILE)  # a kill mid-write never leaves a broken checkpoint

    # ---- scoring --------------------------------------------------------------------------
    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        """Next-item scores from the history; a request without history gets log-popularity. Read-only: the
        thread's last result is reused while the weights are unchanged (retrieve, then score, ask alike)."""
        parameters = list(self.net.parameters())
        # the weights' in-place version counters: a training step or load_state_dict changes them
        key = (histories_key(requests), tuple(parameter._version for parameter in parameters))
        return memo_last(self, (self.net, self.prior, *parameters), key, len(requests) * self.n_items,
                         lambda: self._score_all(requests))

    @torch.no_grad()
    def _score_all(self, requests: Sequence[Request]) -> np.ndarray:
        self.net.eval()
        device = next(self.net.parameters()).device
        scores = np.empty((len(requests), self.n_items), dtype=np.float32)
        with_history = [row for row, request in enumerate(requests) if len(request.history)]
        scores[:] = self.prior[None, :]
        if with_history:
            histories = [np.asarray(requests[row].history, dtype=np.int64) + 1 for row in with_history]
            padded = torch.from_numpy(left_pad(histories, self.params.max_len)).to(device)
            longest = max(min(len(h), self.params.max_len) for h in histories)
            last = self.net(padded[:, -longest:])[:, -1]
            scores[with_history] = (last @ self.net.item_table().T).float().cpu().numpy()
        scores.setflags(write=False)
        return scores

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates)
        if candidates.ndim == 1:
            candidates = np.broadcast_to(candidates, (len(requests), len(candidates)))
        return np.take_along_axis(self.score_all(requests), candidates, axis=1)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.net.state_dict(), "prior": torch.from_numpy(self.prior)}, folder / f"{self.name}.pt")
        config = {"params": self.params.model_dump(), "n_items": self.n_items, "history": self.history}
        (folder / f"{self.name}.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "SASRec":
        folder = Path(folder)
        config = json.loads((folder / f"{cls.name}.json").read_text(encoding="utf-8"))
        ranker = cls(SASRecParams.model_validate(config["params"]))
        ranker.n_items = config["n_items"]
        ranker.history = config["history"]
        saved = torch.load(folder / f"{cls.name}.pt", map_location="cpu", weights_only=True)
        ranker.net = SASRecNet(ranker.n_items, ranker.params)
        ranker.net.load_state_dict(saved["model"])
        ranker.prior = saved["prior"].numpy()
        ranker.device = pick_device("cpu")
        return ranker
