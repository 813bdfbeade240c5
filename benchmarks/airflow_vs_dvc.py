"""The training DAG against plain `dvc repro` on the same sample (target: at most 1.2 times).

Usage: python benchmarks/airflow_vs_dvc.py [--json OUT] [--tiny] [--repeat N] [--workdir DIR]

Each run builds fresh project copies (dvc.yaml as it is now, params.yaml, and every file a stage
reads that no stage writes), each with its own git repository, DVC cache, local remote and
BentoML home, so nothing is restored from a cache: both sides start from a clean workspace.
  dvc      `dvc repro` (then, reported apart, `dvc push`: the DAG pushes, plain repro does not)
  airflow  `airflow dags test shopfusion_training` with AIRFLOW_HOME in the copy (db migrate untimed),
           the task instances' own durations read back from the metadata database
Afterwards, on the up-to-date airflow copy, the fixed cost of one task's commands is timed with
nothing left to do (a no-op `dvc repro --single-item` and `dvc push`, and the task's whole script).
`--tiny` shrinks the shop (tests/conftest.py TINY_SAMPLE); `--repeat` alternates the two sides.
Run it under `flock /tmp/shopfusion-heavy.lock`: the timings assume the cores are free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # after PYTHONPATH: a benchmark may run an older snapshot of pipelines/

from pipelines.orchestration import dvc_dag

BIN = Path(sys.executable).parent
_RUNNING = re.compile(r"^Running stage '([^']+)':")
TARGET_RATIO = 1.2
TINY_SAMPLE = {"n_items": 300, "n_users": 150, "n_queries": 80, "days": 30}
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}


def source_paths(stages: dict[str, dvc_dag.Stage]) -> list[str]:
    """Every dep that no stage writes: what a copy needs to run the whole pipeline."""
    outs = [out for stage in stages.values() for out in stage.outs]
    deps = {dep for stage in stages.values() for dep in stage.deps}
    return sorted(dep for dep in deps if not any(dvc_dag._overlaps(dep, out) for out in outs))


def runnable_stages() -> tuple[dict, list[str]]:
    """dvc.yaml's stages less those that read a file nothing provides (a stage still being written
    elsewhere, e.g. a dep on models/student before the distill stage exists) and everything downstream."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = dvc_dag.read_stages(REPO / "dvc.yaml")
    dropped = []
    while True:
        outs = [out for stage in stages.values() for out in stage.outs]
        missing = [name for name, stage in stages.items()
                   if any(not any(dvc_dag._overlaps(dep, out) for out in outs) and not (REPO / dep).exists()
                          for dep in stage.deps)]
        missing += [down for up, down in dvc_dag.stage_edges(stages) if up in missing]
        if not missing:
            break
        dropped += sorted(set(missing))
        stages = {name: stage for name, stage in stages.items() if name not in missing}
    spec["stages"] = {name: body for name, body in spec["stages"].items() if name in stages}
    return spec, dropped


def make_project(folder: Path, tiny: bool) -> Path:
    project = folder / "project"
    project.mkdir(parents=True)
    spec, _ = runnable_stages()
    (project / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    stages = dvc_dag.read_stages(project / "dvc.yaml")
    for relative in source_paths(stages):
        source, target = REPO / relative, project / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, target)
    for undeclared in ("constraints.txt",):  # read by the package stage without being one of its deps
        if (REPO / undeclared).exists():
            shutil.copy2(REPO / undeclared, project / undeclared)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if tiny:
        params["sample"].update(TINY_SAMPLE)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / ".gitignore").write_text("/.secrets/\n/.airflow/\n/.shopfusion/\n")
    for args in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                 [str(BIN / "dvc"), "remote", "add", "-d", "local", "../dvcstore"],
                 ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(args, cwd=project, env=environment(folder, project), check=True, capture_output=True)
    return project


def environment(folder: Path, project: Path) -> dict:
    return {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "SHOPFUSION_PII_KEY": "bench-key-not-secret", "SHOPFUSION_LOG_LEVEL": "WARNING",
            "BENTOML_HOME": str(folder / "bentoml"), "BENTOML_DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
            "DO_NOT_TRACK": "1", "SCARF_ANALYTICS": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "AIRFLOW_HOME": str(folder / "airflow"), dvc_dag.HOME_ENV: str(project),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False"}


def timed(args: list[str], cwd: Path, env: dict, timeout: int = 7200) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return round(time.perf_counter() - started, 2), result


def check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise SystemExit(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def repro_with_stage_times(project: Path, env: dict) -> tuple[float, dict[str, float], str]:
    """`dvc repro`, timing each stage from its "Running stage" line to the next one (or the end)."""
    started = time.perf_counter()
    process = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    marks, output = [], []
    for line in process.stdout:
        output.append(line)
        match = _RUNNING.match(line)
        if match:
            marks.append((match.group(1), time.perf_counter()))
    code = process.wait()
    ended = time.perf_counter()
    if code != 0:
        raise SystemExit(f"dvc repro failed ({code}):\n{''.join(output)[-6000:]}")
    stage_seconds = {name: round(end - start, 2) for (name, start), (_, end) in zip(marks, marks[1:] + [("", ended)])}
    return round(ended - started, 2), stage_seconds, "".join(output)


def run_dvc(folder: Path, tiny: bool) -> dict:
    project = make_project(folder, tiny)
    env = environment(folder, project)
    seconds, stage_seconds, _ = repro_with_stage_times(project, env)
    push_seconds, pushed = timed([str(BIN / "dvc"), "push", "-q"], project, env)
    check(pushed, "dvc push")
    return {"seconds": seconds, "stages": stage_seconds, "push_seconds": push_seconds}


def json_document(stdout: str):
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith(("[", "{"))))


def task_durations(env: dict, project: Path) -> tuple[str, dict[str, dict]]:
    airflow = str(BIN / "airflow")
    runs = subprocess.run([airflow, "dags", "list-runs", dvc_dag.TRAINING_DAG_ID, "-o", "json"], env=env,
                          cwd=project, capture_output=True, text=True, timeout=300)
    run = max(json_document(runs.stdout), key=lambda row: row.get("start_date") or "")
    states = subprocess.run([airflow, "tasks", "states-for-dag-run", dvc_dag.TRAINING_DAG_ID, run["run_id"],
                             "-o", "json"], env=env, cwd=project, capture_output=True, text=True, timeout=300)
    tasks = {}
    for row in json_document(states.stdout):
        start, end = row.get("start_date"), row.get("end_date")
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() if start and end else None
        tasks[row["task_id"]] = {"state": row["state"], "seconds": round(seconds, 2) if seconds is not None else None}
    return run["state"], tasks


def run_airflow(folder: Path, tiny: bool) -> dict:
    project = make_project(folder, tiny)
    env = environment(folder, project)
    migrated = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, cwd=project, capture_output=True,
                              text=True, timeout=600)
    check(migrated, "airflow db migrate")
    seconds, result = timed([str(BIN / "airflow"), "dags", "test", dvc_dag.TRAINING_DAG_ID], project, env)
    state, tasks = task_durations(env, project)
    if state != "success":
        raise SystemExit(f"the DAG run ended {state}: {tasks}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    in_tasks = sum(task["seconds"] or 0 for task in tasks.values())
    return {"seconds": seconds, "tasks": tasks, "seconds_in_tasks": round(in_tasks, 2),
            "seconds_outside_tasks": round(seconds - in_tasks, 2), "project": project}


def fixed_costs(project: Path, folder: Path, stage: str) -> dict:
    """On the up-to-date workspace nothing is left to do: what each side still takes is its fixed cost.
    The whole DAG again against `dvc repro` again, then one task's commands."""
    env = environment(folder, project)
    dvc = str(BIN / "dvc")
    costs = {}
    costs["dvc_repro_noop"], result = timed([dvc, "repro"], project, env)
    check(result, "dvc repro (no-op)")
    costs["airflow_dags_test_noop"], result = timed([str(BIN / "airflow"), "dags", "test",
                                                     dvc_dag.TRAINING_DAG_ID], project, env)
    state, tasks = task_durations(env, project)
    if state != "success":
        raise SystemExit(f"the no-op DAG run ended {state}: {tasks}")
    costs["airflow_noop_seconds_in_tasks"] = round(sum(task["seconds"] or 0 for task in tasks.values()), 2)
    for name, args in (("dvc_repro_single_item_noop", [dvc, "repro", "--single-item", stage]),
                       ("dvc_push_stage_noop", [dvc, "push", stage]),
                       ("task_script_noop", ["bash", "-c", dvc_dag.stage_script(stage, venv_bin=str(BIN))])):
        seconds, result = timed(args, project, env)
        check(result, name)
        costs[name] = seconds
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tiny shop of the tests instead of params.yaml's")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the project copies here (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="airflow_vs_dvc_"))
    spec, dropped = runnable_stages()
    stages = list(spec["stages"])
    if dropped:
        print(f"left out (a dep that nothing provides yet): {', '.join(dropped)}")
    rounds = []
    try:
        for index in range(args.repeat):
            dvc = run_dvc(workdir / f"dvc{index}", args.tiny)
            airflow = run_airflow(workdir / f"airflow{index}", args.tiny)
            project = airflow.pop("project")
            costs = fixed_costs(project, workdir / f"airflow{index}", stages[-1])
            rounds.append({"dvc_repro": dvc, "airflow_dags_test": airflow, "fixed_costs_per_task": costs,
                           "ratio": round(airflow["seconds"] / dvc["seconds"], 3)})
            print(f"round {index + 1}: dvc repro {dvc['seconds']:.1f} s (+ push {dvc['push_seconds']:.1f} s), "
                  f"airflow dags test {airflow['seconds']:.1f} s (in tasks {airflow['seconds_in_tasks']:.1f} s), "
                  f"ratio {rounds[-1]['ratio']:.2f}")
            for task, row in airflow["tasks"].items():
                print(f"  {task:12s} {row['state']:8s} airflow task {row['seconds']} s, "
                      f"dvc repro stage {dvc['stages'].get(task)} s")
            print(f"  on the up-to-date workspace (fixed costs): {costs}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = [r["ratio"] for r in rounds]
    document = {"stages": stages, "left_out_stages": dropped, "sample": TINY_SAMPLE if args.tiny else "params.yaml sample",
                "orchestration_push": dvc_dag.orchestration_params(REPO).push, "rounds": rounds,
                "ratio_median": sorted(ratios)[len(ratios) // 2], "target_ratio": TARGET_RATIO,
                "within_target": max(ratios) <= TARGET_RATIO, "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"stages: {' -> '.join(stages)}; ratio {document['ratio_median']:.2f} (target <= {TARGET_RATIO})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
