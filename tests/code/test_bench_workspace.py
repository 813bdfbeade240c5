"""The benchmarks' workspace runner: dvc.yaml's stages, the workspace's params, DVC-like skipping."""

from __future__ import annotations

import pytest
import yaml

from pipelines.bench import workspace
from pipelines.core.errors import DataError


def test_upstream_follows_dvc_yaml_deps_in_its_order():
    stages = workspace.dvc_stages()
    assert workspace.upstream(stages, "evaluate") == ["ingest", "validate", "clean", "features", "finetune", "recall",
                                                      "fuse", "evaluate"]
    assert workspace.upstream(stages, "features") == ["ingest", "validate", "clean", "features"]
    assert "distill" in workspace.upstream(stages, "package") and "audit" not in workspace.upstream(stages, "package")


def test_overrides_merge_into_the_repository_params(tmp_path):
    path = workspace.write_params(tmp_path, {"ingest.source": "home-depot", "fusion.lambdarank": {"n_estimators": 7}})
    written = yaml.safe_load(path.read_text())
    repository = yaml.safe_load((workspace.ROOT / "params.yaml").read_text())
    assert written["ingest"]["source"] == "home-depot"
    assert written["fusion"]["lambdarank"]["n_estimators"] == 7
    assert written["fusion"]["lambdarank"]["learning_rate"] == repository["fusion"]["lambdarank"]["learning_rate"]
    assert written["sample"] == repository["sample"]


def test_a_misspelled_override_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="ranking.serch_components"):
        workspace.write_params(tmp_path, {"ranking.serch_components": ["bm25"]})


def test_unknown_benchmark_section_names_the_file(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("search: {}\n")
    with pytest.raises(DataError, match="bench.yaml: no section 'nope'"):
        workspace.bench_settings("nope", path)


def test_a_stage_stamp_changes_with_its_inputs(tmp_path):
    stage = {"cmd": "shopfusion features --clean data/clean --out data/features", "deps": ["data/clean"],
             "params": ["features.seed", "features.valid_days"]}
    (tmp_path / "data" / "clean").mkdir(parents=True)
    (tmp_path / "data" / "clean" / "catalog.parquet").write_bytes(b"one")
    params = {"features": {"seed": 1, "valid_days": 7, "test_days": 14}, "fusion": {"folds": 5}}
    first = workspace.stage_stamp(tmp_path, stage, params)
    assert workspace.stage_stamp(tmp_path, stage, params) == first
    other_keys = {"features": {"seed": 1, "valid_days": 7, "test_days": 3}, "fusion": {"folds": 2}}
    assert workspace.stage_stamp(tmp_path, stage, other_keys) == first  # keys the stage does not read
    assert workspace.stage_stamp(tmp_path, stage, {"features": {"seed": 2, "valid_days": 7}}) != first
    (tmp_path / "data" / "clean" / "__pycache__").mkdir()
    (tmp_path / "data" / "clean" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    assert workspace.stage_stamp(tmp_path, stage, params) == first  # an import's cache is no change
    (tmp_path / "data" / "clean" / "catalog.parquet").write_bytes(b"two")
    assert workspace.stage_stamp(tmp_path, stage, params) != first


def test_the_stage_command_runs_this_interpreters_shopfusion():
    command = workspace.shopfusion_command("shopfusion fuse --features data/features")
    assert command[-2:] == ["--features", "data/features"]
    assert command[0].endswith("shopfusion") or command[:3][-1] == "pipelines.cli"
