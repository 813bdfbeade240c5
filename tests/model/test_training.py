"""Fine-tuning loops on the tiny shop, on CPU: loss goes down, checkpoints resume, LoRA, torchrun with 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.models.training import (
    FinetuneParams,
    load_bi_encoder,
    search_pairs,
    train_bi_encoder,
    train_cross_encoder,
    trainable_cross_encoder,
)
from tests.conftest import params_section, write_params_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_pairs(tiny_run):
    """(query -> judged item text) pairs and cross-encoder rows (judged + one unjudged item per query)."""
    from pipelines.core.items import Items

    items = Items.from_catalog(pd.read_parquet(tiny_run["clean"] / "catalog.parquet"))
    queries = pd.read_parquet(tiny_run["clean"] / "queries.parquet")
    queries = queries[queries["item_id"].isin(items.position)].drop_duplicates("query_id").head(16)
    texts = list(dict.fromkeys(queries["query"]))
    judgments = pd.DataFrame({"query": [texts.index(q) for q in queries["query"]],
                              "item": items.positions(queries["item_id"]),
                              "relevance": queries["relevance"].astype(float).to_numpy()})
    pairs = search_pairs(judgments, texts, items.texts, min_relevance=0.0)
    generator = np.random.default_rng(0)
    unjudged = [items.texts[i] for i in generator.integers(0, len(items), len(pairs))]
    cross = pd.concat([
        pd.DataFrame({"query": pairs["anchor"], "text": pairs["positive"], "gain": judgments["relevance"] + 1.0,
                      "relevance": judgments["relevance"]}),
        pd.DataFrame({"query": pairs["anchor"], "text": unjudged, "gain": 0.0, "relevance": np.nan}),
    ], ignore_index=True)
    return pairs[["anchor", "positive"]].assign(negative=unjudged), cross


def small(steps: int, **changes) -> FinetuneParams:
    loop = {"max_steps": steps, "batch_size": 8, "lr": 3e-4, "warmup_ratio": 0.0, "max_seq_length": 32}
    return params_section("finetune", bi_encoder=loop, cross_encoder=loop, log_every=1, checkpoint_every=2,
                          device="cpu", **changes)


def contrastive_loss(model_path, pairs: pd.DataFrame) -> float:
    """Mean in-set cross-entropy of each anchor against all positives (what training lowers)."""
    import torch

    encoder = load_bi_encoder(str(model_path) if model_path else None, 32, params_section("finetune.lora"))
    anchors = encoder.encode(pairs["anchor"].tolist(), normalize_embeddings=True, convert_to_tensor=True)
    positives = encoder.encode(pairs["positive"].tolist(), normalize_embeddings=True, convert_to_tensor=True)
    logits = 20.0 * anchors @ positives.T
    return float(torch.nn.functional.cross_entropy(logits, torch.arange(len(pairs))))


def cross_encoder_error(model_path, rows: pd.DataFrame) -> float:
    from pipelines.models.rankers.cross_encoder import (
        CrossEncoderRanker,
    )

    ranker = CrossEncoderRanker(params_section("text.cross_encoder", model_path=str(model_path) if model_path else None))
    predicted = ranker.predict(list(zip(rows["query"], rows["text"])))[:, 0]
    return float(np.mean((predicted - rows["gain"].to_numpy()) ** 2))


def test_bi_encoder_loss_decreases(tiny_pairs, tmp_path):
    pairs, _ = tiny_pairs
    before = contrastive_loss(None, pairs)
    result = train_bi_encoder(pairs, tmp_path, small(8))
    assert result.steps == 8 and result.examples == 64 and result.examples_per_second > 0
    assert contrastive_loss(result.model_path, pairs) < before - 0.05


def test_cross_encoder_loss_decreases(tiny_pairs, tmp_path):
    _, rows = tiny_pairs
    before = cross_encoder_error(None, rows)
    result = train_cross_encoder(rows, tmp_path, small(8))
    assert len(result.losses) == 8 and np.isfinite(result.losses).all()
    assert cross_encoder_error(result.model_path, rows) < before


def test_checkpoint_resume_continues_from_saved_step(tiny_pairs, tmp_path):
    _, rows = tiny_pairs
    first = train_cross_encoder(rows, tmp_path, small(4))
    assert first.steps == 4 and (tmp_path / "checkpoint.pt").exists()
    resumed = train_cross_encoder(rows, tmp_path, small(6))
    assert resumed.steps == 6
    assert resumed.examples == 2 * 8, "only the two steps after the checkpoint ran"
    fresh = train_cross_encoder(rows, tmp_path / "fresh", small(6, resume=False))
    assert fresh.examples == 6 * 8


@pytest.mark.parametrize("kind", ["bi-encoder", "cross-encoder"])
def test_lora_trains_only_adapters(kind, tiny_pairs, tmp_path):
    lora = params_section("finetune.lora", enabled=True, r=4, alpha=8)
    model = load_bi_encoder(None, 32, lora) if kind == "bi-encoder" else trainable_cross_encoder(None, lora)[0]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable), trainable[:5]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.05 * total
    pairs, rows = tiny_pairs
    trainer, examples = (train_bi_encoder, pairs) if kind == "bi-encoder" else (train_cross_encoder, rows)
    result = trainer(examples, tmp_path, small(2, lora=lora))
    assert (result.model_path / "config.json").exists(), "adapters are merged into a plain model folder"


@pytest.mark.slow
def test_torchrun_two_processes(tiny_pairs, tmp_path):
    pairs, _ = tiny_pairs
    examples = tmp_path / "pairs.jsonl"
    pairs.to_json(examples, orient="records", lines=True)
    params = write_params_file(tmp_path / "params.yaml", finetune=small(2).model_dump())
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipelines.models.training", "bi-encoder",
               "--examples", str(examples), "--out", str(tmp_path / "out"), "--params", str(params)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the workers too, not only torchrun
        process.communicate()
        pytest.fail("torchrun did not finish in 240 s")
    assert process.returncode == 0, stderr[-2000:]
    result = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    assert result["examples"] == 2 * 8 * 2, "each step consumes one batch per process"
    assert (tmp_path / "out" / "model" / "config.json").exists()
