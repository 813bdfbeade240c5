"""distill on the tiny shop: a smaller student that loads offline, encodes like the teacher, is quantized
faithfully, learns from training-split texts only, and refuses a damaged folder with a clear message."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import DataError
from pipelines.data.dataset import load_training_data
from pipelines.models import student as student_module
from pipelines.stages import distill as distill_module
from pipelines.stages.features import build_features
from tests.conftest import REPO, TINY_DISTILL, params_section, with_sections


@pytest.fixture(scope="module")
def settings(tiny_settings):
    return with_sections(tiny_settings, distill=TINY_DISTILL)


@pytest.fixture(scope="module")
def teacher_run(tiny_run, settings, tmp_path_factory):
    """Features of the tiny shop and a recall folder holding only the dense component (the teacher)."""
    from pipelines.models.rankers.dense import DenseRetriever

    root = tmp_path_factory.mktemp("distill")
    build_features(tiny_run["clean"], root / "features", settings)
    DenseRetriever.from_settings(settings).fit(load_training_data(root / "features")).save(root / "recall" / "dense")
    return root


@pytest.fixture(scope="module")
def distilled(teacher_run, settings):
    """One distill run, with the texts the student was trained on recorded."""
    seen = {}
    original = distill_module.train_student

    def recording(student, tokenizer, texts, targets, params, device, *args):
        seen["texts"] = list(texts)
        return original(student, tokenizer, texts, targets, params, device, *args)

    patch = pytest.MonkeyPatch()
    patch.setattr(distill_module, "train_student", recording)
    summary = distill_module.distill(teacher_run / "recall", teacher_run / "features", teacher_run / "student", settings)
    patch.undo()
    return {"summary": summary, "texts": seen["texts"], "folder": teacher_run / "student", "root": teacher_run}


@pytest.fixture(scope="module")
def queries(teacher_run):
    judgments = pd.read_parquet(teacher_run / "features" / "judgments.parquet")
    return judgments["query"].drop_duplicates().head(12).tolist()


def test_student_keeps_fewer_layers_than_the_teacher(distilled):
    meta = json.loads((distilled["folder"] / "student.json").read_text())
    config = json.loads((distilled["folder"] / "model" / "config.json").read_text())
    assert meta["layers"] == params_section("distill").layers
    assert config["num_hidden_layers"] == len(meta["layers"]) < meta["teacher_layers"] == 6
    assert meta["max_seq_length"] == TINY_DISTILL["max_seq_length"]
    assert meta["quantization"] == "int8-dynamic"


def test_summary_compares_teacher_and_student_on_the_validation_queries(distilled, teacher_run):
    summary = distilled["summary"]
    valid_queries = pd.read_parquet(teacher_run / "features" / "judgments.parquet").query("split == 'valid'")
    assert summary["split"] == "valid"
    assert summary["queries"] == valid_queries["query_id"].nunique()
    assert summary["steps"] == TINY_DISTILL["steps"]
    for key in ("teacher_ms", "student_ms", "speedup", "teacher_ndcg@10", "student_ndcg@10", "ndcg_loss_pct"):
        assert np.isfinite(summary[key]), key
    assert 0 < summary["teacher_ndcg@10"] <= 1


def test_distill_trains_on_training_split_texts_only(distilled, teacher_run):
    judgments = pd.read_parquet(teacher_run / "features" / "judgments.parquet")
    trained = set(distilled["texts"])
    held_out = set(judgments.loc[judgments["split"] != "train", "query"])
    assert held_out and not trained & held_out
    assert set(judgments.loc[judgments["split"] == "train", "query"]) <= trained


def test_student_loads_offline_and_gives_normalized_embeddings(distilled, queries):
    encoder = distill_module.load_query_encoder(distilled["folder"], quantize=False)
    vectors = encoder.encode(queries)
    assert vectors.dtype == np.float32 and vectors.shape == (len(queries), encoder.dimension) == (len(queries), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([encoder.encode([query]) for query in queries])
    np.testing.assert_allclose(one_by_one, vectors, atol=1e-4)  # padding in a batch changes nothing


def test_student_folder_is_also_a_sentence_transformers_model(distilled, queries):
    from sentence_transformers import SentenceTransformer

    reference = distill_module.load_query_encoder(distilled["folder"], quantize=False).encode(queries)
    loaded = SentenceTransformer(str(distilled["folder"] / "model"), device="cpu")
    vectors = loaded.encode(queries, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(vectors, reference, atol=1e-4)


def test_quantized_student_stays_close_to_the_fp32_student(distilled, queries):
    fp32 = distill_module.load_query_encoder(distilled["folder"], quantize=False).encode(queries)
    int8 = distill_module.load_query_encoder(distilled["folder"], quantize=True).encode(queries)
    cosines = (fp32 * int8).sum(axis=1)
    assert cosines.min() > 0.9
    assert not np.allclose(fp32, int8, atol=1e-6)  # the quantized encoder is really another computation


def test_loading_keeps_the_calibrated_fp32_linears_and_quantizes_the_rest(distilled):
    import torch

    meta = json.loads((distilled["folder"] / "student.json").read_text())
    assert meta["weight_scales"] == "per-channel"
    assert len(meta["fp32_linears"]) == params_section("distill").fp32_linears == 1
    modules = dict(distill_module.load_query_encoder(distilled["folder"], trace=False).model.named_modules())
    quantized = {name for name, module in modules.items() if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)}
    assert type(modules[meta["fp32_linears"][0]]) is torch.nn.Linear
    assert len(quantized) == 6 * len(meta["layers"]) - 1  # q, k, v, attention output, FFN in and out per layer


def test_int8_sensitive_linears_finds_a_linear_reading_an_outlier_channel(distilled, queries):
    import torch

    model, tokenizer = student_module._load_transformer(distilled["folder"] / "model")
    target = "encoder.layer.1.attention.output.dense"
    assert distill_module.int8_sensitive_linears(model, tokenizer, queries, 24, count=1) != [target]
    layer = model.encoder.layer[1]
    with torch.no_grad():  # the same function, but channel 7 of the attention output's input is 1000x larger
        layer.attention.self.value.weight[7] *= 1000
        layer.attention.self.value.bias[7] *= 1000
        layer.attention.output.dense.weight[:, 7] /= 1000
    picked = distill_module.int8_sensitive_linears(model, tokenizer, queries, 24, count=2)
    assert len(picked) == 2
    assert picked[0] == target  # one int8 input scale per call rounds the other channels to almost nothing


def test_teacher_encoder_reproduces_the_recall_item_embeddings(teacher_run):
    dense = teacher_run / "recall" / "dense" / "dense"
    items = pd.read_parquet(teacher_run / "features" / "items.parquet")
    teacher = distill_module.load_teacher_encoder(dense)
    np.testing.assert_allclose(teacher.encode(items["text"].head(16).tolist()),
                               np.load(dense / "item_embeddings.npy")[:16], atol=1e-4)


def test_compare_encoders_measures_no_loss_against_itself(teacher_run, queries):
    dense = teacher_run / "recall" / "dense" / "dense"
    teacher = distill_module.load_teacher_encoder(dense)
    items = np.load(dense / "item_embeddings.npy")
    gains = [{int(np.argmax(items @ vector)): 1.0} for vector in teacher.encode(queries)]
    result = distill_module.compare_encoders(teacher, teacher, queries, gains, items, timing_queries=2, repeats=1)
    assert result["teacher_ndcg@10"] == result["student_ndcg@10"] == 1.0
    assert result["ndcg_loss_pct"] == 0.0
    assert result["teacher_ms"] > 0 and result["student_ms"] > 0


def test_dense_ndcg_ranks_items_by_inner_product():
    items = np.eye(4, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.0, 0.0], [0.0, 0.0, 0.2, 0.8]], dtype=np.float32)
    assert distill_module.dense_ndcg(queries, [{1: 1.0}, {3: 2.0}], items, k=2) == 1.0
    assert distill_module.dense_ndcg(queries, [{0: 1.0}, {0: 1.0}], items, k=2) == pytest.approx(1 / np.log2(3) / 2)


def test_layers_out_of_range_are_refused(distilled):
    teacher = distill_module.load_teacher_encoder(distilled["root"] / "recall" / "dense" / "dense")
    with pytest.raises(DataError, match="distill.layers"):
        distill_module.make_student(teacher.model, [0, 6])


def test_the_saved_torchscript_encoder_serves_as_the_student_without_transformers(distilled, queries):
    assert distilled["summary"]["layers"] and (distilled["folder"] / "encoder.pt").exists()
    assert json.loads((distilled["folder"] / "student.json").read_text())["scripted"] == "encoder.pt"
    loaded = distill_module.load_query_encoder(distilled["folder"])
    rebuilt = distill_module.load_query_encoder(distilled["folder"], scripted=False)  # quantized and traced again
    assert loaded.model is None and rebuilt.model is not None
    np.testing.assert_allclose(loaded.encode(queries), rebuilt.encode(queries), atol=1e-5)
    probe = ("import sys; from pipelines.stages.distill import load_query_encoder; "
             f"vectors = load_query_encoder({str(distilled['folder'])!r}).encode(['a query']); "
             "print(vectors.shape[1], 'transformers' in sys.modules)")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert answer.stdout.split() == ["384", "False"]


def test_the_fast_tokenizer_pads_and_truncates_as_the_transformers_one(distilled, queries):
    from transformers import AutoTokenizer

    model_dir = distilled["folder"] / "model"
    reference = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tokenize = student_module.fast_tokenizer(model_dir, 16)
    for texts in (queries, [" ".join(queries)], ["x", "ünïcödé téxt " * 9]):  # mixed lengths, one truncated
        ids, mask = tokenize(texts)
        wanted = reference(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        assert ids.tolist() == wanted["input_ids"].tolist() and mask.tolist() == wanted["attention_mask"].tolist()
    assert tokenize([" ".join(queries)])[0].shape[1] == 16


@pytest.mark.parametrize("damage, named, scripted", [
    ("missing_folder", "student.json", True),
    ("missing_meta", "student.json", True),
    ("truncated_encoder", "encoder.pt", True),
    ("bad_tokenizer", "tokenizer.json", True),
    ("truncated_weights", "model.safetensors", False),
    ("missing_weights", "model.safetensors", False),
    ("bad_config", "config.json", False),
])
def test_damaged_student_folder_is_refused_naming_the_file(distilled, tmp_path, damage, named, scripted):
    folder = tmp_path / "student"
    shutil.copytree(distilled["folder"], folder)
    weights = folder / "model" / "model.safetensors"
    if damage == "missing_folder":
        shutil.rmtree(folder)
    elif damage == "missing_meta":
        (folder / "student.json").unlink()
    elif damage == "truncated_encoder":
        encoder = folder / "encoder.pt"
        encoder.write_bytes(encoder.read_bytes()[:1000])
    elif damage == "bad_tokenizer":
        (folder / "model" / "tokenizer.json").write_text("{not json")
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing_weights":
        weights.unlink()
    else:
        (folder / "model" / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=named):
        distill_module.load_query_encoder(folder, scripted=scripted)


def test_cli_without_a_dense_component_names_the_missing_file(teacher_run, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["distill", "--recall", str(tmp_path / "recall"), "--features",
                                      str(teacher_run / "features"), "--out", str(tmp_path / "student"),
                                      "--metrics", str(tmp_path / "distill.json")])
    assert result.exit_code == 2
    assert "item_embeddings.npy" in result.output


def test_a_bundle_with_the_scripted_student_leaves_its_transformer_weights_out(distilled, tiny_bundle, queries,
                                                                               tmp_path):
    from pipelines.serving.bundle import assemble, verify

    root, manifest = tiny_bundle["root"], verify(tiny_bundle["bundle"])
    assemble(root / "features", root / "recall", root / "fusion", distilled["folder"], tmp_path / "bundle",
             manifest["components"], "with-student", manifest["serving"], manifest["metrics"])
    files = verify(tmp_path / "bundle")["files"]
    assert "student/encoder.pt" in files and "student/model/tokenizer.json" in files
    assert "student/model/model.safetensors" not in files
    served = distill_module.load_query_encoder(tmp_path / "bundle" / "student").encode(queries)
    np.testing.assert_allclose(served, distill_module.load_query_encoder(distilled["folder"]).encode(queries), atol=1e-6)
