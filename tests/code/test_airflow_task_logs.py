"""The project's log lines reach an Airflow task log at their own level, not as ERROR.

Airflow 3's task runner (the supervisor) shows every line a task process writes to stderr as ERROR, and the
BashOperator logs every line of its command's output as INFO. Each test runs one real task of a DAG under
that supervisor (pipelines/bench/faults/airflow.py: a stand-in execution API, no scheduler, no database) and
reads the task log file it writes, as the UI shows it: a few seconds each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.bench.faults import airflow as probe
from tests.conftest import REPO

pytestmark = pytest.mark.integration  # Airflow's supervisor and dvc repro in subprocesses

STAGE_LINES = {"stage info line": "info", "stage warning line": "warning", "stage error line": "error"}
# A dvc.yaml stage whose command logs one line per level through pipelines.core.logs, as every stage does.
STAGE_CMD = ("python -c \"from pipelines.core import logs; logs.configure(); log = logs.get_logger('stage'); "
             "log.info('stage info line'); log.warning('stage warning line'); log.error('stage error line')\"")
STDERR_DAG = """
from datetime import datetime
from airflow.sdk import DAG, task
from pipelines.core import logs

@task
def speak():
    logs.configure()  # JSON lines on stderr, as before the fix
    logs.get_logger("probe").info("python task info line")

with DAG("stderr_probe", schedule=None, start_date=datetime(2026, 1, 1)):
    speak()
"""


def stage_project(root):
    """A DVC project (no git) with one stage, `speak`, and the repository's params.yaml without pushes."""
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"speak": {"cmd": STAGE_CMD}}}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["orchestration"]["push"] = False  # no DVC remote here
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True,
                   capture_output=True)
    return root


def test_a_stages_json_lines_reach_the_training_task_log_at_their_level(tmp_path):
    project = stage_project(tmp_path / "project")
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "shopfusion_training.py").symlink_to(REPO / "dags" / "shopfusion_training.py")  # the real DAG file
    code, events = probe.supervised_task_log(tmp_path, dags, "shopfusion_training.py", probe.TRAINING_DAG_ID,
                                             "speak", SHOPFUSION_HOME=str(project))
    assert code == 0, json.dumps(events[-10:], indent=1)
    assert probe.levels_of(events, STAGE_LINES) == STAGE_LINES


def test_a_python_tasks_project_lines_keep_their_level(tmp_path):
    """What dags/shopfusion_monitoring.py's monitor task does (logs.configure_for_airflow_task)."""
    assert probe.python_task_levels(tmp_path) == probe.PYTHON_TASK_LINES


def test_the_probe_sees_stderr_as_error(tmp_path):
    """The control: the same supervisor shows a line written to stderr as ERROR, so the tests above would fail
    if the project's lines went back to stderr."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "stderr_probe.py").write_text(STDERR_DAG)
    _, events = probe.supervised_task_log(tmp_path, dags, "stderr_probe.py", "stderr_probe", "speak")
    assert probe.levels_of(events, ["python task info line"]) == {"python task info line": "error"}


def test_line_level_reads_the_level_a_json_line_names():
    from pipelines.core import logs

    assert logs.line_level('{"ts":"x","level":"warning","event":"e"}') == logs.LEVELS["warning"]
    assert logs.line_level("Running stage 'speak':") == logs.LEVELS["info"]
    assert logs.line_level('{"level": 3}', default=5) == 5 and logs.line_level("{broken", default=5) == 5
