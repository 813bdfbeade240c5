"""DAG integrity: every DAG file imports, parses fast and light, and the training DAG is dvc.yaml.

Airflow is loaded in a subprocess with its own AIRFLOW_HOME (a temp folder), so the test process
neither creates ~/airflow nor carries Airflow's import cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest
import yaml

from pipelines.bench.faults.airflow import probe_dag_folder
from pipelines.orchestration import dvc_dag
from tests.conftest import REPO

HEAVY = ("torch", "pandas", "great_expectations", "evidently", "sklearn")



def load_dagbag(tmp_path: Path, home: Path | None = None) -> dict:
    """The DAG folder loaded by Airflow in a subprocess (the fault benchmark's probe)."""
    report, _ = probe_dag_folder(tmp_path / "airflow", REPO / "dags", HEAVY,
                                 **{dvc_dag.HOME_ENV: str(home) if home else None})
    return report


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    return load_dagbag(tmp_path_factory.mktemp("dagbag"))


def test_every_dag_file_imports_without_errors(dagbag):
    dag_files = sorted(p.name for p in (REPO / "dags").glob("*.py"))
    assert dag_files and dagbag["import_errors"] == {}
    assert sorted(Path(f).name for f in dagbag["files"]) == dag_files
    assert {dvc_dag.TRAINING_DAG_ID, dvc_dag.MONITORING_DAG_ID} <= set(dagbag["dags"])


def test_every_dag_file_is_parsed(dagbag):
    # The parse-time target (<= 1 s a file) is measured by benchmarks/dag_parse.py, not asserted here.
    parsed = {Path(f).name for f in dagbag["files"]}
    assert parsed == {path.name for path in (REPO / "dags").glob("*.py")}


def test_nothing_heavy_is_imported_at_parse_time(dagbag):
    assert dagbag["heavy"] == []


def test_new_dags_start_paused(dagbag):
    assert all(dag["paused"] for dag in dagbag["dags"].values())


def expected_tasks(stages: dict) -> list[str]:
    """One task per stage, then promote when there is a package stage."""
    return list(stages) + ([dvc_dag.PROMOTE_TASK] if dvc_dag.PACKAGE_STAGE in stages else [])


def test_training_tasks_are_the_dvc_stages(dagbag):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    training = dagbag["dags"][dvc_dag.TRAINING_DAG_ID]
    assert training["tasks"] == expected_tasks(stages)
    assert all(retries >= 1 for retries in training["retries"].values())
    assert all(backoff > 0 for backoff in training["backoff"].values())


def _writes(body: dict) -> list[str]:
    paths = []
    for kind in ("outs", "metrics", "plots"):
        paths += [next(iter(e)) if isinstance(e, dict) else e for e in body.get(kind, [])]
    return paths


def _inside(a: str, b: str) -> bool:
    a_parts, b_parts = PurePosixPath(a).parts, PurePosixPath(b).parts
    return a_parts[:len(b_parts)] == b_parts or b_parts[:len(a_parts)] == a_parts


def test_training_edges_follow_deps_on_other_stages_outs(dagbag):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    expected = sorted([up, down] for down, d_body in stages.items() for up, u_body in stages.items()
                      if up != down and any(_inside(dep, out) for dep in d_body.get("deps", [])
                                            for out in _writes(u_body)))
    if dvc_dag.PACKAGE_STAGE in stages:
        expected = sorted(expected + [[dvc_dag.PACKAGE_STAGE, dvc_dag.PROMOTE_TASK]])
    assert dagbag["dags"][dvc_dag.TRAINING_DAG_ID]["edges"] == expected
    assert ["ingest", "validate"] in expected and ["validate", "clean"] in expected


def test_a_stage_added_to_dvc_yaml_is_a_new_task_without_editing_the_dag(tmp_path):
    home = tmp_path / "project"
    home.mkdir()
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"]["report"] = {"cmd": "shopfusion report", "deps": ["metrics/validate.json", "data/clean/events.parquet"],
                                "outs": ["reports/summary"]}
    (home / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (home / "params.yaml").write_text((REPO / "params.yaml").read_text())
    training = load_dagbag(tmp_path, home)["dags"][dvc_dag.TRAINING_DAG_ID]
    assert training["tasks"] == expected_tasks(spec["stages"])
    assert ["validate", "report"] in training["edges"] and ["clean", "report"] in training["edges"]
    assert not any(up == "report" for up, _ in training["edges"])


def _project(home: Path, stages: dict) -> Path:
    home.mkdir()
    (home / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (home / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return home


def test_a_package_stage_gets_a_promote_task_after_it_that_skips_on_rejection(tmp_path):
    stages = {"evaluate": {"cmd": "shopfusion evaluate", "outs": ["metrics/evaluate.json"]},
              "package": {"cmd": "shopfusion package", "deps": ["metrics/evaluate.json"], "outs": ["bentos/bento.json"]}}
    training = load_dagbag(tmp_path, _project(tmp_path / "with", stages))["dags"][dvc_dag.TRAINING_DAG_ID]
    assert training["tasks"] == ["evaluate", "package", "promote"]
    assert training["edges"] == [["evaluate", "package"], ["package", "promote"]]
    assert training["skip_codes"]["promote"] == [dvc_dag.REJECTED_EXIT]
    assert dvc_dag.REJECTED_EXIT not in training["skip_codes"]["package"]
    without = load_dagbag(tmp_path, _project(tmp_path / "without", {"evaluate": stages["evaluate"]}))
    assert without["dags"][dvc_dag.TRAINING_DAG_ID]["tasks"] == ["evaluate"]


def test_the_promote_task_runs_the_gate_with_the_skip_exit_code():
    script = dvc_dag.promote_script(venv_bin="/opt/venv/bin")
    assert script.splitlines()[-1] == f"shopfusion promote --rejected-exit-code {dvc_dag.REJECTED_EXIT}"
    assert "/opt/venv/bin" in script


def test_monitoring_dag_triggers_training_only_after_the_decision(dagbag):
    monitoring = dagbag["dags"][dvc_dag.MONITORING_DAG_ID]
    assert sorted(monitoring["edges"]) == [["monitor", "needs_retrain"], ["needs_retrain", "trigger_training"]]


def test_a_manual_trigger_with_the_default_params_is_valid(dagbag):
    """The UI keeps Trigger disabled while a required string is empty: the defaults must validate as they are."""
    training = dagbag["dags"][dvc_dag.TRAINING_DAG_ID]
    assert training["params_error"] is None
    assert training["params"]["reason"] and training["params"]["overrides"] == {}


def test_default_run_is_plain_repro_and_overrides_make_an_experiment():
    assert dvc_dag.dvc_commands("clean") == ["dvc repro --single-item clean", "dvc push clean"]
    repro, push = dvc_dag.dvc_commands("clean", '{"sample.n_users": 500, "ingest.source": "sample"}')
    assert repro == "dvc exp run --single-item clean -S ingest.source=sample -S sample.n_users=500"
    assert push == "dvc push clean"
    assert dvc_dag.dvc_commands("clean", {"fusion.weight_grid": [0.5, 1.0]}, push=False) == [
        "dvc exp run --single-item clean -S 'fusion.weight_grid=[0.5, 1.0]'"]


@pytest.mark.parametrize("overrides", ['{"sample.n_users; rm -rf /": 1}', "[1, 2]", "not json"])
def test_malformed_overrides_are_refused(overrides):
    from pipelines.core.errors import DataError

    with pytest.raises(DataError, match="overrides"):
        dvc_dag.dvc_commands("clean", overrides)


@pytest.mark.parametrize("key", ["serving.public_paths", "promotion.tolerance", "privacy.key_file", "feedback.policy",
                                 "orchestration.push", "monitor.window_days"])
def test_overrides_outside_the_model_and_data_sections_are_refused(key):
    from pipelines.core.errors import DataError

    with pytest.raises(DataError, match=f"{key}.*may not be set from a trigger"):
        dvc_dag.dvc_commands("package", {key: ["/search"]})


def _fake_dvc(folder: Path, repro_exit: int, stage_exit: int) -> Path:
    """A `dvc` package whose CLI fails the way DVC does: 255, the stage's own code only in its message."""
    (folder / "dvc").mkdir(parents=True)
    (folder / "dvc" / "__init__.py").write_text("")
    (folder / "dvc" / "cli.py").write_text(textwrap.dedent(f"""\
        import sys

        def main(argv):
            with open({str(folder / "calls")!r}, "a") as calls:
                calls.write(" ".join(argv) + "\\n")
            if argv[0] == "repro":
                print('{{"events": {{"rows_in": 10}}}}')
                if {repro_exit}:
                    print("ERROR: failed to reproduce '%s': failed to run: x, exited with {stage_exit}" % argv[2],
                          file=sys.stderr)
                    return {repro_exit}
            return 0
        """))
    return folder


@pytest.mark.parametrize(("repro_exit", "stage_exit", "expected", "pushed"),
                         [(0, 0, 0, True), (255, 2, dvc_dag.DATA_ERROR_EXIT, False), (255, 1, 255, False)])
def test_stage_script_fails_data_errors_with_their_own_code(tmp_path, repro_exit, stage_exit, expected, pushed):
    fake = _fake_dvc(tmp_path / "fake", repro_exit, stage_exit)
    script = dvc_dag.stage_script("validate", venv_bin=str(Path(sys.executable).parent))
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{REPO}"})
    assert result.returncode == expected, result.stderr
    assert '"rows_in": 10' in result.stdout  # the stage's JSON summary reaches the task log
    calls = (fake / "calls").read_text().splitlines()
    assert calls[0] == "repro --single-item validate" and (calls[1:] == ["push validate"]) == pushed


def test_dvc_task_runs_its_commands_in_one_process_in_order(tmp_path):
    fake = _fake_dvc(tmp_path / "fake", 0, 0)
    result = subprocess.run([sys.executable, "-m", "pipelines.orchestration.dvc_task", "dvc repro --single-item clean",
                             "dvc push clean", "rm -rf /"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{REPO}"})
    assert result.returncode == 64 and "not a dvc command: rm -rf /" in result.stderr
    assert (fake / "calls").read_text().splitlines() == ["repro --single-item clean", "push clean"]
