"""10. The DAGs as a user meets them, checked cheaply (no DAG run, a few seconds):
- the DAG files parse with no import errors, and the training DAG's params validate with their defaults (the
  UI's Trigger button is disabled while they do not);
- `airflow dags` commands import graphviz (Airflow warns on every call when it is missing);
- the monitoring rule does not retrain on a served log of lists too young to have clicks, and still does on
  old lists without clicks (the rule was not simply switched off);
- a Python task's project log lines reach the task log at their own level: a task is run by Airflow's real
  supervisor (the one that shows a task's stderr as ERROR) against a stand-in execution API, and its log read.

Airflow runs in subprocesses with their own AIRFLOW_HOME: importing it here would reconfigure this process's
logging and cost seconds of imports the other scenarios do not need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

from pipelines.bench.faults import Fault, FaultContext
from pipelines.core.config import load_settings
from pipelines.core.params import MonitorParams
from pipelines.orchestration.dvc_dag import MONITORING_DAG_ID, TRAINING_DAG_ID

ROOT = Path(__file__).resolve().parents[3]
DAGS = ROOT / "dags"
AIRFLOW_TIMEOUT_S = 180

# Loads the DAG folder as the dag-processor does and reports what a user meets: import errors, each DAG's tasks,
# edges, schedule, retries and params (validated as the trigger form does), the heavy modules parsing imported
# (argv[2]: their names), and whether the module `airflow dags` commands render graphs with finds graphviz.
DAGBAG_PROBE = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    before = set(sys.modules)
    bag = DagBag(dag_folder=sys.argv[1])
    heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in json.loads(sys.argv[2]))
    from airflow.utils import dot_renderer

    def params_error(dag):
        try:
            dag.params.validate()
        except Exception as error:
            return str(error)
        return None

    print(json.dumps({
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "files": {str(s.file): s.duration.total_seconds() if hasattr(s.duration, "total_seconds") else s.duration
                  for s in bag.dagbag_stats},
        "heavy": heavy,
        "graphviz": dot_renderer.graphviz is not None,
        "params_errors": {dag_id: params_error(dag) for dag_id, dag in bag.dags.items()},
        "dags": {dag_id: {"tasks": [t.task_id for t in dag.tasks],
                          "edges": sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids),
                          "paused": dag.is_paused_upon_creation, "schedule": str(dag.schedule),
                          "params": {key: dag.params[key] for key in dag.params}, "params_error": params_error(dag),
                          "retries": {t.task_id: t.retries for t in dag.tasks},
                          "backoff": {t.task_id: t.retry_exponential_backoff for t in dag.tasks},
                          "skip_codes": {t.task_id: list(getattr(t, "skip_on_exit_code", None) or [])
                                         for t in dag.tasks}}
                 for dag_id, dag in bag.dags.items()},
    }))
""")

# One task instance through Airflow's own supervisor (airflow.sdk.execution_time.supervisor.supervise_task):
# it forks the task process, reads its stdout, stderr and logging channel and writes the task log file. The
# execution API is a stand-in (httpx.MockTransport) that starts the run and accepts every state update.
_SUPERVISED_TASK = textwrap.dedent("""
    import sys, uuid
    import httpx
    from airflow.sdk.api.client import Client
    from airflow.sdk.api.datamodels._generated import BundleInfo, TaskInstance
    from airflow.sdk.execution_time.supervisor import supervise_task

    dag_file, dag_id, task_id, log_path = sys.argv[1:5]
    RUN = {"dag_id": dag_id, "run_id": "probe", "logical_date": "2026-01-01T00:00:00Z", "data_interval_start": None,
           "data_interval_end": None, "run_after": "2026-01-01T00:00:00Z", "start_date": "2026-01-01T00:00:00Z",
           "end_date": None, "run_type": "manual", "state": "running", "conf": {}, "consumed_asset_events": [],
           "partition_key": None}

    def execution_api(request):
        if request.url.path.endswith("/run"):
            return httpx.Response(200, json={"dag_run": RUN, "max_tries": 0, "should_retry": False})
        return httpx.Response(200, json={})

    ti = TaskInstance(id=uuid.uuid4(), dag_id=dag_id, task_id=task_id, run_id="probe", try_number=1,
                      dag_version_id=uuid.uuid4(), map_index=-1)
    client = Client(base_url=None, dry_run=True, token="", transport=httpx.MockTransport(execution_api))
    sys.exit(supervise_task(ti=ti, bundle_info=BundleInfo(name="dags-folder", version=None), dag_rel_path=dag_file,
                            token="", log_path=log_path, client=client))
""")

# A Python task that sets up the project's logging as dags/shopfusion_monitoring.py's monitor task does.
_PYTHON_TASK_DAG = textwrap.dedent("""
    from datetime import datetime

    from airflow.sdk import DAG, task

    from pipelines.core import logs


    @task
    def speak():
        logs.configure_for_airflow_task()
        log = logs.get_logger("probe")
        log.info("python task info line")
        log.warning("python task warning line")


    with DAG("log_levels_probe", schedule=None, start_date=datetime(2026, 1, 1)):
        speak()
""")
PYTHON_TASK_LINES = {"python task info line": "info", "python task warning line": "warning"}


def airflow_env(home: Path, dags_folder: Path, **extra: str | None) -> dict:
    """A private Airflow for one probe: its own home and DAG folder, no examples, no telemetry; an `extra`
    variable given as None is left out."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
           "DO_NOT_TRACK": "1", "SCARF_ANALYTICS": "false", "DVC_NO_ANALYTICS": "1", **extra}
    return {name: value for name, value in env.items() if value is not None}


def probe_dag_folder(work: Path, dags_folder: Path = DAGS, heavy: tuple[str, ...] = (), **env: str | None) -> tuple[dict, str]:
    """(DAGBAG_PROBE's report of a DagBag over `dags_folder`, the probe's stderr); env: more variables."""
    result = subprocess.run([sys.executable, "-c", DAGBAG_PROBE, str(dags_folder), json.dumps(list(heavy))],
                            env=airflow_env(work / "home", dags_folder, **env), capture_output=True, text=True,
                            timeout=AIRFLOW_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"DagBag probe failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def supervised_task_log(work: Path, dags_folder: Path, dag_file: str, dag_id: str, task_id: str,
                        **env: str) -> tuple[int, list[dict]]:
    """Run one task under Airflow's supervisor; (its exit code, the events of its task log, as the UI reads them)."""
    log_path = work / f"{dag_id}.{task_id}.log"
    result = subprocess.run([sys.executable, "-c", _SUPERVISED_TASK, dag_file, dag_id, task_id, str(log_path)],
                            env=airflow_env(work / "home", dags_folder, **env), capture_output=True, text=True,
                            timeout=AIRFLOW_TIMEOUT_S)
    if not log_path.exists():
        raise RuntimeError(f"no task log written: {result.stderr[-2000:]}")
    lines = log_path.read_text(encoding="utf-8").splitlines()
    return result.returncode, [json.loads(line) for line in lines if line.startswith("{")]


def project_line(event: dict) -> dict | None:
    """The project's JSON log line (pipelines.core.logs) that a task log event carries as its text, if any."""
    text = str(event.get("event", ""))
    if not text.startswith('{"'):
        return None
    try:
        line = json.loads(text)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def levels_of(events: list[dict], messages) -> dict[str, str | None]:
    """The level the task log gives each message of the project's log lines (None: not in the log). Matched on
    the line's own "event": DVC also echoes a stage's command, messages and all, at INFO."""
    levels = {}
    for event in events:
        line = project_line(event)
        if line and line.get("event") in messages:
            levels.setdefault(line["event"], event.get("level"))
    return {message: levels.get(message) for message in messages}


def python_task_levels(work: Path) -> dict[str, str | None]:
    dags_folder = work / "dags"
    dags_folder.mkdir(parents=True, exist_ok=True)
    (dags_folder / "log_levels_probe.py").write_text(_PYTHON_TASK_DAG, encoding="utf-8")
    _, events = supervised_task_log(work, dags_folder, "log_levels_probe.py", "log_levels_probe", "speak")
    return levels_of(events, PYTHON_TASK_LINES)


def served_log(folder: Path, lists: int, age_minutes: float) -> Path:
    """The service's own feedback log holding `lists` lists served `age_minutes` ago, none of them clicked."""
    from pipelines.feedback.log import FeedbackLog

    log = FeedbackLog(folder)
    served_at = time.time() - age_minutes * 60
    for number in range(lists):
        log.log_served({"request_id": f"age{age_minutes:g}-{number}", "task": "recommend",
                        "items": ["P000001", "P000002"], "timestamp": served_at})
    log.close()
    return folder


def monitor_retrains(feedback: Path, params: MonitorParams) -> bool:
    """The monitoring decision on this feedback log alone (no drift scores)."""
    from pipelines.stages.monitor import decide, feedback_quality

    proxies = feedback_quality(feedback, {"P000001": 10, "P000002": 5}, 100, params, datetime.now(timezone.utc))
    return decide({}, proxies, params)["retrain"]


def check_monitor_rule(fault: Fault, folder: Path, params: MonitorParams) -> None:
    lists = params.min_feedback_lists + 50  # more than the rule's minimum: only their age may hold it back
    young = served_log(folder / "young", lists, age_minutes=params.feedback_settle_minutes / 4)
    settled = served_log(folder / "settled", lists, age_minutes=params.feedback_settle_minutes * 2)
    fault.check("young_lists_do_not_retrain", not monitor_retrains(young, params))
    fault.check("settled_lists_without_clicks_retrain", monitor_retrains(settled, params))
    fault.figures["served_lists"] = lists


def check_dag_folder(fault: Fault, work: Path) -> None:
    bag, stderr = probe_dag_folder(work)
    fault.check("dags_import", not bag["import_errors"])
    fault.check("dags_present", {TRAINING_DAG_ID, MONITORING_DAG_ID} <= set(bag["params_errors"]))
    fault.check("trigger_defaults_valid", bag["params_errors"].get(TRAINING_DAG_ID, "missing") is None)
    fault.check("graphviz", bag["graphviz"] and "graphviz" not in stderr.lower())
    fault.figures.update(import_errors=bag["import_errors"], params_errors=bag["params_errors"])


def check_task_log_levels(fault: Fault, work: Path) -> None:
    levels = python_task_levels(work)
    fault.check("info_logged_as_info", levels == PYTHON_TASK_LINES)
    fault.figures["task_log_levels"] = levels


def run(context: FaultContext) -> Fault:
    folder = context.folder("airflow")
    params = load_settings(context.pipeline_params or ROOT / "params.yaml").monitor
    fault = Fault()
    check_dag_folder(fault, folder / "dagbag")
    check_monitor_rule(fault, folder / "feedback", params)
    check_task_log_levels(fault, folder / "task")
    fault.requests = len(fault.checks)  # a request here is one check of what a user meets
    fault.errors = sum(not holds for holds in fault.checks.values())
    return fault
