"""The import rules of pipelines/: folders are layers and imports only go down.

core <- data, models <- ranking <- feedback <- serving <- stages <- bench, orchestration, cli.
Only the CLI, the DAGs and the benchmarks import stages; the benchmarks may import orchestration (the fault
benchmark checks the DAGs' override rules); serving imports only core, models,
ranking and feedback; models and data import only core; no cycle between files or packages.
Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.imports import import_graph, imported_modules, module_name

ROOT = Path(__file__).resolve().parents[2]

# package -> the packages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "ranking": {"core", "data", "models"},
    "feedback": {"core", "data", "models", "ranking"},
    "serving": {"core", "models", "ranking", "feedback"},
    "stages": {"core", "data", "models", "ranking", "feedback", "serving"},
    "orchestration": {"core"},
    "bench": {"core", "data", "models", "ranking", "feedback", "serving", "stages", "orchestration"},
    "cli": {"core", "data", "models", "ranking", "feedback", "serving", "stages", "bench", "orchestration"},
}
OUTSIDE = {  # folders outside pipelines/ and the packages they may import
    "dags": {"core", "orchestration", "stages"},
    "bentos": {"core", "models", "ranking", "feedback", "serving"},
    "benchmarks": set(ALLOWED) - {"cli"},
}


def modules() -> dict[str, Path]:
    return {module_name(path, ROOT): path for path in (ROOT / "pipelines").rglob("*.py")}


def imported(path: Path, known=None) -> set[str]:
    return imported_modules(path, ROOT)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipelines"


def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_every_module_is_in_a_layer():
    assert {package_of(name) for name in modules()} - {"pipelines"} == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_go_down(package):
    wrong = sorted(f"{source} imports {target}" for source, targets in graph().items() if package_of(source) == package
                   for target in targets
                   if package_of(target) not in ALLOWED[package] | {package, "pipelines"})
    assert not wrong, "\n".join(wrong)


def test_no_stage_imports_another_stage():
    wrong = sorted(f"{source} imports {target}" for source, targets in graph().items() if package_of(source) == "stages"
                   for target in targets if package_of(target) == "stages" and target != "pipelines.stages")
    assert not wrong, "\n".join(wrong)


def test_serving_never_imports_training_loops():
    wrong = sorted(f"{source} imports {target}" for source, targets in graph().items() if package_of(source) == "serving"
                   for target in targets if target == "pipelines.models.training")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("folder", sorted(OUTSIDE))
def test_outside_folders_import_only_what_they_may(folder):
    wrong = sorted(f"{path.relative_to(ROOT)} imports {target}" for path in (ROOT / folder).glob("*.py")
                   for target in imported(path) if package_of(target) not in OUTSIDE[folder])
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_no_cycle_between_files():
    assert _cycles(graph()) == []


def test_no_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for source, targets in graph().items():
        packages.setdefault(package_of(source), set()).update(
            package_of(target) for target in targets if package_of(target) not in (package_of(source), "pipelines"))
    assert _cycles(packages) == []


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def serving_closure() -> set[str]:
    """The pipelines modules bentos/service.py needs, walked here from the graph, with the packages on the way."""
    edges = graph()
    todo, seen = list(imported(ROOT / "bentos" / "service.py")), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            parts = name.split(".")
            todo += [".".join(parts[:end]) for end in range(1, len(parts))] + list(edges[name])
    return seen


def test_the_bento_packs_only_what_serving_imports():
    import yaml

    from pipelines.stages.package import bento_python_files

    bentofile = yaml.safe_load((ROOT / "bentos" / "bentofile.yaml").read_text(encoding="utf-8"))
    packed = {module_name(ROOT / file, ROOT) for file in bento_python_files(ROOT) if file.startswith("pipelines/")}
    assert packed == serving_closure()
    assert not any(pattern.startswith("pipelines/") and "*" in pattern for pattern in bentofile["include"])
    assert "pipelines.models.training" not in packed and not any(name.startswith("pipelines.stages") for name in packed)
