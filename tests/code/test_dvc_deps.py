"""dvc.yaml's deps and params say exactly what each stage's code is and reads.

Code: the import closure of the stage module its command runs (`shopfusion <stage>` runs
pipelines/stages/<stage>.py; package also builds the bento from bentos/service.py) must be the set
of pipelines/ files its deps cover, no more, no less: an untracked file makes DVC skip a rerun the
change needs, an extra one reruns for nothing. Params: every params.yaml key that a file of the
closure reads (`section(settings, "key", ...)`, `settings.key...`) is listed, and nothing else, at the
depth the code reads it. A component's section counts for every stage whose closure holds the
component registry: those stages run the components' code too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines.core.imports import closure

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
SECTION_CALL = re.compile(r"section\(\s*\w+\s*,\s*\"([\w.]+)\"")
SETTINGS_ATTRIBUTE = re.compile(r"\bsettings\.(\w+(?:\.\w+)*)")
DOTTED_VALUE = re.compile(r"\"([a-z_]+(?:\.[a-z_]+)+)\"")


def stage_code(stage: str) -> set[Path]:
    start = [ROOT / "pipelines" / "stages" / f"{stage}.py"]
    if stage == "package":
        start.append(ROOT / "bentos" / "service.py")
    return set(closure(start, ROOT)) | {path for path in start if "pipelines" in path.parts}


def covered(deps: list[str]) -> set[Path]:
    files = set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith("pipelines"):
            files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


def params_key(chain: str) -> str | None:
    """The longest prefix of a dotted attribute chain that names a params.yaml key."""
    parts = chain.split(".")
    parts[0] = "validate" if parts[0] == "validate_" else parts[0]
    node, keep = PARAMS, []
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            break
        node, keep = node[part], keep + [part]
    return ".".join(keep) or None


def keys_read(files: set[Path]) -> set[str]:
    keys = set()
    for path in files:
        text = path.read_text(encoding="utf-8")
        keys |= {params_key(key) for key in SECTION_CALL.findall(text)}
        keys |= {params_key(chain) for chain in SETTINGS_ATTRIBUTE.findall(text)}
    keys.discard(None)
    return {key for key in keys if not any(key.startswith(other + ".") for other in keys)}


def keys_in_suites(deps: list[str]) -> set[str]:
    """params.yaml keys that JSON deps (the GX suites) name as values, such as "validate.max_price"."""
    produced = {next(iter(out)) if isinstance(out, dict) else out for stage in DVC.values()
                for kind in ("outs", "metrics", "plots") for out in stage.get(kind, [])}
    sources = [dep for dep in deps if not dep.startswith("pipelines")
               and not any(dep == out or dep.startswith(out + "/") for out in produced)]  # not a stage's output
    files = [path for dep in sources for path in
             ((ROOT / dep).rglob("*.json") if (ROOT / dep).is_dir() else [ROOT / dep]) if path.suffix == ".json"]
    quoted = {match for path in files for match in DOTTED_VALUE.findall(path.read_text(encoding="utf-8"))}
    return {key for key in quoted if params_key(key) == key}


def declared_params(stage: str) -> set[str]:
    return {entry if isinstance(entry, str) else next(iter(entry)) for entry in DVC[stage].get("params", [])}


STAGES = [name for name, stage in DVC.items() if stage["cmd"].split()[:2][0] == "shopfusion"]


def test_every_stage_runs_a_stage_module():
    for name in STAGES:
        assert DVC[name]["cmd"].split()[1] == name
        assert (ROOT / "pipelines" / "stages" / f"{name}.py").is_file()


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_the_import_closure(stage):
    needed, listed = stage_code(stage), covered(DVC[stage]["deps"])
    missing = sorted(str(path.relative_to(ROOT)) for path in needed - listed)
    extra = sorted(str(path.relative_to(ROOT)) for path in listed - needed)
    assert not missing and not extra, f"dvc.yaml stage {stage}: missing {missing}, not imported {extra}"


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_the_keys_the_code_reads(stage):
    read = keys_read(stage_code(stage)) | keys_in_suites(DVC[stage]["deps"])
    read = {key for key in read if not any(key.startswith(other + ".") for other in read)}
    declared = declared_params(stage)
    assert declared == read, (f"dvc.yaml stage {stage}: read but not listed {sorted(read - declared)}, "
                              f"listed but not read {sorted(declared - read)}")


def test_key_scan_sees_both_ways_of_reading():
    assert params_key("validate_.max_bad_fraction") == "validate.max_bad_fraction"
    assert params_key("features.seed") == "features.seed"
    assert params_key("sample.model_copy") == "sample"
    assert params_key("model_extra") is None
    assert SECTION_CALL.findall('section(settings, "fusion", FusionParams)') == ["fusion"]
