"""`dvc repro` end to end on a tiny sample: runs, a second run is a no-op, push and pull round-trip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_DISTILL, TINY_FINETUNE, TINY_SAMPLE

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # dvc repro, push, pull


def run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SHOPFUSION_LOG_LEVEL": "WARNING", "BENTOML_HOME": str(Path(cwd) / ".bentoml")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvc_project")
    for folder in ("pipelines", "expectations"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "bentos").mkdir()
    for name in ("service.py", "bentofile.yaml", "__init__.py"):
        shutil.copy(REPO / "bentos" / name, root / "bentos" / name)
    for name in ("dvc.yaml", "constraints.txt"):
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sample"].update(TINY_SAMPLE)
    for key, value in TINY_FINETUNE.items():
        params["finetune"][key] = {**params["finetune"][key], **value} if isinstance(value, dict) else value
    params["distill"].update(TINY_DISTILL)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / ".gitignore").write_text("/.dvcstore/\n/.secrets/\n/.bentoml/\n")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-d", "local", "../.dvcstore"], root)
    return root


def test_repro_runs_every_stage_and_writes_metrics(project):
    run(["dvc", "repro"], project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    validate = json.loads((project / "metrics" / "validate.json").read_text())
    assert all(t["rows_in"] == t["rows_valid"] + t["rows_quarantined"] for t in validate.values())
    assert json.loads((project / "metrics" / "defects.json").read_text())["unaccounted"] == 0
    finetune = json.loads((project / "metrics" / "finetune.json").read_text())
    assert finetune["bi_encoder"]["steps"] == TINY_FINETUNE["bi_encoder"]["max_steps"]
    dense = json.loads((project / "models" / "recall" / "dense" / "dense" / "params.json").read_text())
    assert dense["model_path"] == "models/finetune/bi_encoder", "recall's dense component is the fine-tuned one"
    evaluated = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert "lambdarank+cross_encoder" in evaluated["search"]
    bento = json.loads((project / "bentos" / "bento.json").read_text())
    assert bento["tag"].startswith("shopfusion:") and bento["metrics"] == evaluated
    assert (project / bento["bento_file"]).stat().st_size > 0
    assert (project / ".bentoml" / "bentos" / "shopfusion" / bento["version"]).is_dir()


def test_second_repro_is_a_no_op(project):
    output = run(["dvc", "repro"], project)
    assert "up to date" in output and "Running stage" not in output


def test_push_then_pull_restores_the_artifacts(project):
    run(["dvc", "push"], project)
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    run(["dvc", "pull"], project)
    assert (project / "data" / "clean" / "catalog.parquet").exists()
    assert "up to date" in run(["dvc", "status"], project)


def test_a_serving_params_change_repackages_a_new_bundle_carrying_it(project):
    before = json.loads((project / "bentos" / "bento.json").read_text())
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["serving"]["max_body_bytes"] = 20000
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    assert "Running stage 'package'" in output and "Running stage 'evaluate'" not in output
    after = json.loads((project / "bentos" / "bento.json").read_text())
    assert after["bundle_model"] != before["bundle_model"]  # same files, other params: another bundle version
    bundle = project / ".bentoml" / "models" / "shopfusion-bundle" / after["bundle_model"].split(":")[1]
    assert json.loads((bundle / "manifest.json").read_text())["serving"]["serving"]["max_body_bytes"] == 20000


def test_changed_param_reruns_from_that_stage(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["clean"]["session_gap_minutes"] = 45
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], project)
    assert "Running stage 'clean'" in output and "Running stage 'ingest'" not in output


def test_no_raw_pii_in_any_artifact_after_clean(project):
    """Every folder a stage writes after clean (features, models, bentos as they come) is scanned."""
    from tests.data.pii_scan import find_pii, raw_pii_values

    before_clean = {"raw", "validated"}
    folders = [path for path in (project / "data").iterdir() if path.is_dir() and path.name not in before_clean]
    folders += [project / name for name in ("models", "bentos", "metrics", "plots", "reports") if (project / name).exists()]
    assert project / "data" / "clean" in folders
    assert find_pii(folders, raw_pii_values(project / "data" / "raw")) == []
