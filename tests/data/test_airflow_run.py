"""The training DAG run by Airflow itself (`airflow dags test`) on a tiny copy of the project.

SQLite: every task succeeds with the tiny shop passed as trigger-form overrides, and a validation
failure fails validate at once (no retry) and stops downstream. PostgreSQL: the same run with its
metadata in a fresh database (skipped when the server is unreachable or asyncpg, which Airflow 3 needs
for PostgreSQL, is missing). Celery: one task through a CeleryExecutor worker on the local Redis
(skipped without apache-airflow-providers-celery or Redis; see docs/airflow.md for its status).
The project copy keeps the data stages of dvc.yaml (ingest ... audit): the model stages have their
own tests and would make this one minutes long.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pipelines import orchestration
from tests.conftest import REPO, TINY_SAMPLE

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/0"
TINY_OVERRIDES = {f"sample.{key}": value for key, value in TINY_SAMPLE.items()}


def _model_stage(body: dict) -> bool:
    paths = [*(body.get("deps") or []), *(next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs") or [])]
    return any(str(path).startswith("models/") for path in paths)


def make_project(root: Path) -> Path:
    for folder in ("pipelines", "expectations"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"] = {name: body for name, body in spec["stages"].items() if not _model_stage(body)}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / ".gitignore").write_text("/.dvcstore/\n/.secrets/\n/.airflow/\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for args in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                 [str(BIN / "dvc"), "remote", "add", "-d", "local", "../.dvcstore"],
                 ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        subprocess.run(args, cwd=root, env=git_env, check=True, capture_output=True)
    return root


def airflow_env(project: Path, home: Path, **extra: str) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "AIRFLOW_HOME": str(home),
            orchestration.HOME_ENV: str(project), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False", "DO_NOT_TRACK": "1", "SCARF_ANALYTICS": "false",
            "SHOPFUSION_LOG_LEVEL": "WARNING", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.com", **extra}


def airflow(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def json_output(stdout: str):
    """The JSON document of an `airflow ... -o json` command (log lines may come before it)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith(("[", "{"))))


def dags_test(env: dict, conf: dict, *extra: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """Run the training DAG once; return the command's result and {task_id: task instance} of that run."""
    migrated = airflow(env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    run = airflow(env, "dags", "test", orchestration.TRAINING_DAG_ID, "-c", json.dumps(conf), *extra)
    runs = airflow(env, "dags", "list-runs", orchestration.TRAINING_DAG_ID, "-o", "json")
    run_id = json_output(runs.stdout)[0]["run_id"]
    states = airflow(env, "tasks", "states-for-dag-run", orchestration.TRAINING_DAG_ID, run_id, "-o", "json")
    assert states.returncode == 0, states.stderr[-3000:]
    return run, {row["task_id"]: row for row in json_output(states.stdout)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("airflow_project"))


def test_dags_test_runs_every_stage_on_a_tiny_shop(project, tmp_path):
    run, tasks = dags_test(airflow_env(project, tmp_path / "airflow"), {"overrides": TINY_OVERRIDES})
    stages = list(orchestration.read_stages(project / "dvc.yaml"))
    assert {task: row["state"] for task, row in tasks.items()} == {stage: "success" for stage in stages}, \
        run.stdout[-4000:] + run.stderr[-4000:]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    assert lock["ingest"]["params"]["params.yaml"]["sample"]["n_users"] == TINY_SAMPLE["n_users"]
    assert json.loads((project / "metrics" / "defects.json").read_text())["unaccounted"] == 0
    assert any((project.parent / ".dvcstore").rglob("*")), "dvc push wrote nothing to the remote"


def test_a_validation_failure_fails_validate_at_once_and_stops_downstream(project, tmp_path):
    conf = {"overrides": {**TINY_OVERRIDES, "validate.max_bad_fraction": 0.0}}
    run, tasks = dags_test(airflow_env(project, tmp_path / "airflow"), conf)
    assert tasks["ingest"]["state"] == "success"
    assert tasks["validate"]["state"] == "failed"
    # Failed at the first try: a retry would have waited retry_delay_seconds first.
    seconds = (datetime.fromisoformat(tasks["validate"]["end_date"]) - datetime.fromisoformat(
        tasks["validate"]["start_date"])).total_seconds()
    assert seconds < orchestration.orchestration_params(project).retry_delay_seconds
    downstream = [task for task in tasks if task not in ("ingest", "validate")]
    assert downstream and all(tasks[task]["state"] == "upstream_failed" for task in downstream)
    log = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "airflow" / "logs").rglob("*validate*/**/*")
                    if p.is_file()) + run.stdout + run.stderr
    assert '"rows_quarantined"' in log, "the GX summary is not in the validate task log"


def _postgres_reachable() -> bool:
    try:
        import psycopg2

        psycopg2.connect(dbname="postgres", connect_timeout=3, **POSTGRES).close()
        return True
    except Exception:
        return False


@pytest.fixture()
def postgres_db():
    pytest.importorskip("asyncpg", reason="Airflow 3 opens PostgreSQL through asyncpg too (its async engine); "
                                          "install apache-airflow[postgres] to run this check")
    if not _postgres_reachable():
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES['host']}:{POSTGRES['port']} (user {POSTGRES['user']})")
    import psycopg2

    name = f"sf_airflow_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_dags_test_with_postgresql_metadata(postgres_db, tmp_path_factory, tmp_path):
    project = make_project(tmp_path_factory.mktemp("airflow_pg_project"))
    env = airflow_env(project, tmp_path / "airflow", AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres_db,
                      AIRFLOW__CORE__EXECUTOR="LocalExecutor")
    run, tasks = dags_test(env, {"overrides": TINY_OVERRIDES})
    assert tasks and all(row["state"] == "success" for row in tasks.values()), run.stdout[-4000:]
    import psycopg2

    with psycopg2.connect(postgres_db.replace("+psycopg2", "")) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT count(*) FROM task_instance WHERE dag_id = %s AND state = 'success'",
                       (orchestration.TRAINING_DAG_ID,))
        assert cursor.fetchone()[0] == len(tasks)


def _redis_reachable() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping())
    except Exception:
        return False


def _start(env: dict, log: Path, *args: str) -> subprocess.Popen:
    """An Airflow process in its own session, so it is stopped with every child it spawned."""
    return subprocess.Popen([str(BIN / "airflow"), *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_celery_executor_runs_a_task_on_one_worker(tmp_path_factory, tmp_path):
    pytest.importorskip("airflow.providers.celery", reason="apache-airflow-providers-celery is not installed")
    if not _redis_reachable():
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    project = make_project(tmp_path_factory.mktemp("airflow_celery_project"))
    port = _free_port()
    env = airflow_env(project, tmp_path / "airflow", AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
                      AIRFLOW__CELERY__BROKER_URL=REDIS_URL, AIRFLOW__CELERY__RESULT_BACKEND=REDIS_URL,
                      AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
                      AIRFLOW__OPERATORS__DEFAULT_QUEUE=f"shopfusion_test_{uuid.uuid4().hex[:8]}",
                      AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://localhost:{port}/execution/",
                      AIRFLOW__API__PORT=str(port), AIRFLOW__API__HOST="127.0.0.1")
    assert airflow(env, "db", "migrate").returncode == 0
    queue = env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    api = _start(env, tmp_path / "api.log", "api-server", "--port", str(port), "--workers", "1")
    worker = _start(env, tmp_path / "worker.log", "celery", "worker", "--concurrency", "1", "--queues", queue)
    try:
        # ingest alone goes through the worker: the other tasks are marked success without running.
        others = "|".join(s for s in orchestration.read_stages(project / "dvc.yaml") if s != "ingest")
        run, tasks = dags_test(env, {"overrides": TINY_OVERRIDES}, "--use-executor",
                               "--mark-success-pattern", f"^({others})$")
    finally:
        _stop(worker)
        _stop(api)
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    assert tasks["ingest"]["state"] == "success", run.stdout[-3000:] + worker_log[-3000:]
    assert "ingest" in worker_log, worker_log[-3000:]
    assert (project / "data" / "raw" / "events.csv").exists()
