"""The training DAG run by Airflow itself (`airflow dags test`) on a tiny copy of the project.

SQLite: every task succeeds with the tiny shop passed as trigger-form overrides, and a validation
failure fails validate at once (no retry) and stops downstream. PostgreSQL: the same run with its
metadata in a fresh database (skipped when the server is unreachable or asyncpg, which Airflow 3 needs
for PostgreSQL, is missing). Celery: a real deployment (api-server, scheduler and one `airflow celery
worker --concurrency 1` on a queue of its own) runs a triggered DAG run through the local Redis, then
through the local RabbitMQ (each skipped only when its broker is unreachable).
The project copy keeps the data stages of dvc.yaml (ingest ... audit): the model stages have their
own tests and would make this one minutes long.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pipelines.orchestration import dvc_dag
from tests.conftest import REPO, TINY_SAMPLE, free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # Airflow (and Celery workers) running dvc repro

BIN = Path(sys.executable).parent
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
TINY_OVERRIDES = {f"sample.{key}": value for key, value in TINY_SAMPLE.items()}


def _model_stage(body: dict) -> bool:
    paths = [*(body.get("deps") or []), *(next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs") or [])]
    return any(str(path).startswith("models/") for path in paths)


def make_project(root: Path, stages: tuple[str, ...] | None = None, schedule: str | None = "unchanged") -> Path:
    """A git + DVC copy of the project with the data stages (or only `stages`) and its own local remote.

    `schedule` other than "unchanged" replaces params.yaml `orchestration.schedule` (None: manual runs only).
    """
    for folder in ("pipelines", "expectations"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"] = {name: body for name, body in spec["stages"].items()
                      if not _model_stage(body) and (stages is None or name in stages)}
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    if schedule != "unchanged":
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["orchestration"]["schedule"] = schedule
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
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
            dvc_dag.HOME_ENV: str(project), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
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
    run = airflow(env, "dags", "test", dvc_dag.TRAINING_DAG_ID, "-c", json.dumps(conf), *extra)
    runs = airflow(env, "dags", "list-runs", dvc_dag.TRAINING_DAG_ID, "-o", "json")
    run_id = json_output(runs.stdout)[0]["run_id"]
    states = airflow(env, "tasks", "states-for-dag-run", dvc_dag.TRAINING_DAG_ID, run_id, "-o", "json")
    assert states.returncode == 0, states.stderr[-3000:]
    return run, {row["task_id"]: row for row in json_output(states.stdout)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("airflow_project"))


def test_dags_test_runs_every_stage_on_a_tiny_shop(project, tmp_path):
    run, tasks = dags_test(airflow_env(project, tmp_path / "airflow"), {"overrides": TINY_OVERRIDES})
    stages = list(dvc_dag.read_stages(project / "dvc.yaml"))
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
    assert seconds < dvc_dag.orchestration_params(project).retry_delay_seconds
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
                       (dvc_dag.TRAINING_DAG_ID,))
        assert cursor.fetchone()[0] == len(tasks)


def _broker_unreachable(url: str) -> str | None:
    """Why the broker at url cannot be used (None when a connection opens)."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
        return None
    except Exception as error:  # noqa: BLE001 - any failure to connect means "unreachable"
        return f"{type(error).__name__}: {error}"


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


CELERY_STAGES = ("ingest", "validate")
CELERY_DEADLINE_S = 240


def _delete_queue(url: str, queue: str) -> None:
    """Leave no test queue (nor its exchange or bindings) behind on the broker."""
    if url.startswith("redis"):  # kombu keeps a queue in several keys (list, bindings): all hold its unique name
        import redis

        with contextlib.suppress(Exception), redis.Redis.from_url(url, socket_connect_timeout=3) as client:
            keys = list(client.scan_iter(match=f"*{queue}*"))
            if keys:
                client.delete(*keys)
        return
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(url, connect_timeout=3) as connection:
        connection.default_channel.queue_delete(queue)
        connection.default_channel.exchange_delete(queue)


def _query(database: Path, sql: str, *args) -> list[tuple]:
    """Read Airflow's SQLite metadata while the scheduler and the api-server write to it."""
    import sqlite3

    for _ in range(20):
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
                return connection.execute(sql, args).fetchall()
        except sqlite3.OperationalError as error:  # locked, or the table is not there yet
            last = error
            time.sleep(0.5)
    raise last


def _tail(path: Path, chars: int = 3000) -> str:
    return f"\n--- {path.name} ---\n" + (path.read_text(errors="replace")[-chars:] if path.exists() else "(none)")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_celery_executor_runs_the_dag_on_one_worker(broker, tmp_path_factory, tmp_path):
    """Scheduler + api-server + one Celery worker (concurrency 1) run a triggered run of ingest -> validate."""
    broker_url = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}[broker]
    reason = _broker_unreachable(broker_url)
    if reason:
        pytest.skip(f"{broker} broker unreachable at {broker_url}: {reason}")
    project = make_project(tmp_path_factory.mktemp(f"airflow_celery_{broker}"), stages=CELERY_STAGES, schedule=None)
    home = tmp_path / "airflow"
    queue = f"shopfusion_test_{uuid.uuid4().hex[:8]}"
    port = free_port()
    # Results: Redis for the Redis broker; RabbitMQ has no result store the scheduler's state sync can
    # read (rpc:// answers only the sending process), so a SQLite file of Celery's database backend.
    results = REDIS_URL if broker == "redis" else f"db+sqlite:///{tmp_path / 'celery_results.sqlite'}"
    env = airflow_env(project, home, AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
                      AIRFLOW__CELERY__BROKER_URL=broker_url, AIRFLOW__CELERY__RESULT_BACKEND=results,
                      AIRFLOW__CELERY__WORKER_CONCURRENCY="1", AIRFLOW__CELERY__SYNC_PARALLELISM="1",
                      AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue,
                      AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
                      AIRFLOW__API__PORT=str(port), AIRFLOW__API__HOST="127.0.0.1",
                      AIRFLOW__API_AUTH__JWT_SECRET=uuid.uuid4().hex,
                      AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()))
    for args in (("db", "migrate"), ("dags", "reserialize")):  # reserialize: the DAGs without a dag-processor
        done = airflow(env, *args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    logs = {name: tmp_path / f"{name}.log" for name in ("api-server", "scheduler", "worker")}
    processes = []
    try:
        processes.append(_start(env, logs["api-server"], "api-server", "--port", str(port), "--workers", "1"))
        processes.append(_start(env, logs["scheduler"], "scheduler"))
        processes.append(_start(env, logs["worker"], "celery", "worker", "--concurrency", "1", "--queues", queue,
                                "--celery-hostname", f"{queue}@%h", "--skip-serve-logs",
                                "--without-mingle", "--without-gossip"))
        run_id = f"celery_{broker}_{uuid.uuid4().hex[:6]}"
        dag = dvc_dag.TRAINING_DAG_ID
        for args in (("dags", "trigger", dag, "-r", run_id, "-c", json.dumps({"overrides": TINY_OVERRIDES})),
                     ("dags", "unpause", dag)):
            done = airflow(env, *args)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        deadline = time.monotonic() + CELERY_DEADLINE_S
        state = None
        while time.monotonic() < deadline:
            state = _query(home / "airflow.db", "SELECT state FROM dag_run WHERE run_id = ?", run_id)[0][0]
            dead = [p.args[1] for p in processes if p.poll() is not None]
            if state in ("success", "failed") or dead:
                break
            time.sleep(2)
        assert not dead, f"stopped early: {dead}" + "".join(_tail(log) for log in logs.values())
        assert state == "success", f"run {run_id}: {state}" + "".join(_tail(log) for log in logs.values())
    finally:
        for process in reversed(processes):
            _stop(process)
        _delete_queue(broker_url, queue)
    tasks = _query(home / "airflow.db", "SELECT task_id, state, queue FROM task_instance WHERE run_id = ?", run_id)
    assert {task: state for task, state, _ in tasks} == {stage: "success" for stage in CELERY_STAGES}
    assert {task: task_queue for task, _, task_queue in tasks} == {stage: queue for stage in CELERY_STAGES}
    worker_log = logs["worker"].read_text(errors="replace")
    # The provider's Celery task logs each workload it receives under its Celery task id, and Celery
    # logs that id's success once the task process (and so the stage) has finished.
    received = {task: celery_id for celery_id, task in re.findall(
        r"\[([0-9a-f-]{36})\] Executing workload in Celery: .*?task_id='(\w+)'", worker_log)}
    assert set(received) == set(CELERY_STAGES), _tail(logs["worker"])
    for task, celery_id in received.items():
        assert f"execute_workload[{celery_id}] succeeded" in worker_log, f"{task}: " + _tail(logs["worker"])
    assert (project / "data" / "raw" / "events.csv").exists()
    assert json.loads((project / "metrics" / "validate.json").read_text())
