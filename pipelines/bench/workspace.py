"""A benchmark's workspace: the dvc.yaml stages run on a real dataset, exactly as `dvc repro` runs them.

The workspace is a folder with its own params.yaml: the repository's, with the benchmark's overrides
(benchmarks/params.yaml, `<bench>.pipeline`: the source, its path, budgets for a larger catalog).
Each stage's command is read from dvc.yaml and run there, in dvc.yaml's order, as a subprocess with
SHOPFUSION_PARAMS pointing at that file: the same command line, the same stage functions, the same
artifacts that `package` would put in the bento. Nothing model-related happens in a benchmark.

A stage whose command, params (the keys dvc.yaml lists for it) and inputs (its deps, code and data) are
unchanged since its last run in the workspace is not run again, as DVC would skip it: an interrupted
benchmark resumes, and a changed fusion parameter reruns fuse and evaluate only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.core.config import PARAMS_ENV, load_settings
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger

log = get_logger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BENCH_PARAMS = ROOT / "benchmarks" / "params.yaml"
STAMPS = ".stage_stamps.json"
REPO_DEPS = ("pipelines", "expectations", "bentos", "constraints.txt")  # read from the repository, not the workspace


def bench_settings(name: str, path: Path | None = None) -> dict:
    """A benchmark's section of benchmarks/params.yaml (unknown benchmark: an error naming the file)."""
    path = Path(path or BENCH_PARAMS)
    sections = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if name not in sections:
        raise DataError(f"{path}: no section {name!r} (sections: {', '.join(sections)})")
    return sections[name]


def bench_params(name: str, model: type[BaseModel], path: Path | None = None) -> BaseModel:
    """A benchmark's section of benchmarks/params.yaml validated by the benchmark's own model: a missing,
    unknown or mistyped key is an error naming the file and the dotted key."""
    try:
        return model.model_validate(bench_settings(name, path))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in (name, *first["loc"]))
        raise DataError(f"{Path(path or BENCH_PARAMS)}: field {field}: {first['msg']}") from None


def _set(tree: dict, dotted: str, value) -> None:
    """Set a dotted key; a mapping is merged into the mapping already there, key by key."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    if isinstance(value, dict) and isinstance(tree.get(leaf), dict):
        for key, inner in value.items():
            _set(tree[leaf], key, inner)
    else:
        tree[leaf] = value


def write_params(workspace: Path, overrides: dict, base: Path | None = None) -> Path:
    """workspace/params.yaml: the repository's params with `overrides` ({dotted key: value}), validated."""
    params = yaml.safe_load(Path(base or ROOT / "params.yaml").read_text(encoding="utf-8"))
    params = copy.deepcopy(params)
    for key, value in (overrides or {}).items():
        _set(params, key, value)
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / "params.yaml"
    text = yaml.safe_dump(params, sort_keys=False)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    load_settings(path)  # a misspelled override fails here, naming the key
    return path


def dvc_stages(dvc_yaml: Path | None = None) -> dict[str, dict]:
    return yaml.safe_load(Path(dvc_yaml or ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def upstream(stages: dict[str, dict], target: str) -> list[str]:
    """`target` and every stage whose outputs it reads, directly or not, in dvc.yaml's order."""
    outs = {name: [next(iter(o)) if isinstance(o, dict) else o for kind in ("outs", "metrics", "plots")
                   for o in stage.get(kind, [])] for name, stage in stages.items()}
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += [other for other, produced in outs.items() for dep in stages[name].get("deps", [])
                 if any(dep == out or dep.startswith(out + "/") or out.startswith(dep + "/") for out in produced)]
    return [name for name in stages if name in needed]


def _digest_path(digest, path: Path) -> None:
    """Names and contents of the files under `path`; Python's caches (written by any import) left out, as
    .dvcignore leaves them out of DVC's hashes."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc") \
        if path.is_dir() else [path] if path.exists() else []
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def stage_params(stage: dict, params: dict) -> str:
    """The values of the params keys the stage lists in dvc.yaml (what DVC compares), as canonical JSON."""
    values = {}
    for key in stage.get("params", []):
        node = params
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return json.dumps(values, sort_keys=True, default=str)


def stage_stamp(workspace: Path, stage: dict, params: dict) -> str:
    """What the stage's result depends on: its command, its params keys' values, its deps' contents."""
    digest = hashlib.sha256(stage["cmd"].encode() + stage_params(stage, params).encode())
    for dep in stage.get("deps", []):
        _digest_path(digest, (ROOT if dep.startswith(REPO_DEPS) else workspace) / dep)
    return digest.hexdigest()


def shopfusion_command(cmd: str) -> list[str]:
    """The dvc.yaml command with `shopfusion` resolved to this interpreter's console script."""
    words = shlex.split(cmd)
    script = Path(sys.executable).with_name("shopfusion")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "pipelines.cli"]
    return head + words[1:] if words[0] == "shopfusion" else words


def run_stages(workspace: Path, target: str, env: dict | None = None) -> dict[str, float]:
    """Run `target` and what it needs, in the workspace; seconds per stage (0 for one skipped as unchanged)."""
    workspace = Path(workspace).resolve()
    stages = dvc_stages()
    params_path = workspace / "params.yaml"
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    stamps_path = workspace / STAMPS
    stamps = json.loads(stamps_path.read_text()) if stamps_path.exists() else {}
    environment = {**os.environ, **(env or {}), PARAMS_ENV: str(params_path)}
    seconds = {}
    for name in upstream(stages, target):
        stamp = stage_stamp(workspace, stages[name], params)
        if stamps.get(name) == stamp:
            seconds[name] = 0.0
            log.info("stage unchanged", extra={"stage": name, "workspace": str(workspace)})
            continue
        started = time.perf_counter()
        log.info("stage started", extra={"stage": name, "workspace": str(workspace)})
        done = subprocess.run(shopfusion_command(stages[name]["cmd"]), cwd=workspace, env=environment)
        if done.returncode:
            raise DataError(f"{workspace}: stage {name} failed (exit {done.returncode}): {stages[name]['cmd']}")
        seconds[name] = round(time.perf_counter() - started, 1)
        stamps[name] = stage_stamp(workspace, stages[name], params)  # inputs as the stage saw them
        stamps_path.write_text(json.dumps(stamps, indent=2) + "\n")
    return seconds
