"""What the Airflow DAGs call: dvc.yaml read into tasks and edges, and the command each task runs.

Imported by the DAG files at parse time, so it reads YAML and nothing heavier (no pandas, no
DVC, no Airflow). dvc.yaml stays the one place the stages are wired: a stage added there is a
new task, its edges follow from which other stage writes what it reads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from pipelines.core.config import load_settings
from pipelines.core.errors import DataError
from pipelines.core.params import OrchestrationParams

HOME_ENV = "SHOPFUSION_HOME"
TRAINING_DAG_ID = "shopfusion_training"
MONITORING_DAG_ID = "shopfusion_monitoring"
DATA_ERROR_EXIT = DataError.exit_code  # a stage that exits with this code met bad data: retrying cannot help
PACKAGE_STAGE = "package"   # when dvc.yaml has it, the training DAG ends with a promote task after it
PROMOTE_TASK = "promote"
REJECTED_EXIT = 99          # `shopfusion promote` exits with it when the gate keeps the current bento: task skipped
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
# What a trigger may change: the data and the models. Not privacy (the PII key's source), serving (packed into
# the bundle: API keys, public paths), promotion (the gate and its tolerance), orchestration, monitor or feedback
# (the served bandit): a trigger must never be able to open the API or wave a worse model through the gate.
OVERRIDABLE_SECTIONS = ("sample", "ingest", "validate", "clean", "features", "relations", "recall", "sasrec", "text",
                        "finetune", "distill", "fusion", "ranking")
_OUTPUT_KINDS = ("outs", "metrics", "plots")


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def project_root(dag_file: str | Path | None = None) -> Path:
    """$SHOPFUSION_HOME, else the repository that holds the dags/ folder of `dag_file`."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).resolve()
    if dag_file:
        return Path(dag_file).resolve().parents[1]  # dags/<file>.py
    return Path(__file__).resolve().parents[2]  # pipelines/orchestration/dvc_dag.py


def orchestration_params(root: Path) -> OrchestrationParams:
    return load_settings(root / "params.yaml").orchestration


def _paths(entries) -> tuple[str, ...]:
    """dvc.yaml lists paths as plain strings or as one-key mappings {path: options}."""
    paths = []
    for entry in entries or []:
        paths.extend(entry.keys() if isinstance(entry, dict) else [entry])
    return tuple(str(PurePosixPath(path)) for path in paths)


def read_stages(dvc_yaml: Path) -> dict[str, Stage]:
    """The stages of dvc.yaml in file order."""
    try:
        spec = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{dvc_yaml}: cannot read ({exc.__class__.__name__})") from None
    stages = {}
    for name, body in (spec.get("stages") or {}).items():
        if "foreach" in body or "matrix" in body:
            raise DataError(f"{dvc_yaml}: stage {name}: foreach/matrix stages are not supported by the DAG generator")
        cmd = body.get("cmd")
        cmd = " && ".join(cmd) if isinstance(cmd, list) else str(cmd)
        outs = sum((_paths(body.get(kind)) for kind in _OUTPUT_KINDS), ())
        stages[name] = Stage(name, cmd, _paths(body.get("deps")), outs)
    return stages


def _overlaps(dep: str, out: str) -> bool:
    """A dep reads an out when they are the same path or one lies inside the other."""
    dep_parts, out_parts = PurePosixPath(dep).parts, PurePosixPath(out).parts
    shorter = min(len(dep_parts), len(out_parts))
    return dep_parts[:shorter] == out_parts[:shorter]


def stage_edges(stages: dict[str, Stage]) -> list[tuple[str, str]]:
    """(upstream, downstream) for every stage that reads a path another stage writes."""
    edges = []
    for downstream in stages.values():
        for upstream in stages.values():
            if upstream.name == downstream.name:
                continue
            if any(_overlaps(dep, out) for dep in downstream.deps for out in upstream.outs):
                edges.append((upstream.name, downstream.name))
    return edges


def normalize_overrides(overrides) -> dict[str, object]:
    """The trigger form's overrides ({"sample.n_users": 500}, or its JSON text) checked key by key."""
    if overrides in (None, "", {}):
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError:
            raise DataError("overrides: not a JSON object") from None
    if not isinstance(overrides, dict):
        raise DataError("overrides: expected a JSON object such as {\"sample.n_users\": 500}")
    for key in overrides:
        if not _OVERRIDE_KEY.match(str(key)):
            raise DataError(f"overrides: {key!r} is not a params.yaml key path such as sample.n_users")
        if str(key).split(".")[0] not in OVERRIDABLE_SECTIONS:
            raise DataError(f"overrides: {key!r} may not be set from a trigger (allowed sections: "
                            f"{', '.join(OVERRIDABLE_SECTIONS)})")
    return dict(overrides)


def _set_param(key: str, value) -> str:
    """One `-S key=value` argument; non-strings in JSON, which DVC parses as YAML."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"-S {shlex.quote(f'{key}={text}')}"


def dvc_commands(stage: str, overrides=None, push: bool = True) -> list[str]:
    """Plain `dvc repro --single-item` without overrides; with them a DVC experiment (`dvc exp run -S`)."""
    overrides = normalize_overrides(overrides)
    if overrides:
        sets = " ".join(_set_param(key, value) for key, value in sorted(overrides.items()))
        commands = [f"dvc exp run --single-item {shlex.quote(stage)} {sets}"]
    else:
        commands = [f"dvc repro --single-item {shlex.quote(stage)}"]
    if push:
        commands.append(f"dvc push {shlex.quote(stage)}")
    return commands


def stage_script(stage: str, overrides=None, push: bool = True, venv_bin: str | None = None) -> str:
    """The bash a training task runs: its dvc commands in one Python process (pipelines.orchestration.dvc_task),
    the repro then the push, stopping at the first failure. Exits DATA_ERROR_EXIT when the stage
    itself exited with it (DVC reports every stage failure as 255, naming the stage's own code only
    in its message)."""
    commands = " ".join(shlex.quote(command) for command in dvc_commands(stage, overrides, push))
    bin_dir = venv_bin or str(Path(sys.executable).parent)
    lines = [
        "set -uo pipefail",
        f"export PATH={shlex.quote(bin_dir)}:\"$PATH\"",
        "log=$(mktemp)",
        "trap 'rm -f \"$log\"' EXIT",
        f"python -m pipelines.orchestration.dvc_task {commands} 2>&1 | tee \"$log\"",
        "status=${PIPESTATUS[0]}",
        "if [ \"$status\" -ne 0 ]; then",
        f"  if grep -Eq 'exited with {DATA_ERROR_EXIT}\\s*$' \"$log\"; then exit {DATA_ERROR_EXIT}; fi",
        "  exit \"$status\"",
        "fi",
    ]
    return "\n".join(lines) + "\n"


def promote_script(venv_bin: str | None = None) -> str:
    """The bash of the promote task: the gate's decision is printed as JSON (the task log) either way;
    a rejected candidate exits REJECTED_EXIT, which the DAG maps to a skipped task, not a failure."""
    bin_dir = venv_bin or str(Path(sys.executable).parent)
    return "\n".join([
        f"export PATH={shlex.quote(bin_dir)}:\"$PATH\"",
        f"shopfusion promote --rejected-exit-code {REJECTED_EXIT}",
    ]) + "\n"
