"""The import graph of pipelines/, read from the source (nothing is imported).

The package stage packs exactly the service's import closure into the bento, and the tests keep
the layers (imports only go down) and dvc.yaml's code deps (each stage's closure) true with it.
Every import statement counts, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "pipelines"


def module_name(path: Path, root: Path) -> str:
    parts = Path(path).resolve().relative_to(Path(root).resolve()).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str, root: Path) -> Path | None:
    base = Path(root).joinpath(*name.split("."))
    return next((path for path in (base / "__init__.py", base.with_suffix(".py")) if path.is_file()), None)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    return ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))


def imported_modules(path: Path, root: Path) -> set[str]:
    """The pipelines modules (or packages) one file imports, anywhere in it."""
    path = Path(path)
    importer = module_name(path, root) if path.resolve().is_relative_to(Path(root).resolve()) else path.stem
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, importer, path.name == "__init__.py")
            # `from package import module` imports the module; `from module import name` the module
            names = [f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}", root) else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                while name and not module_file(name, root):
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
    return found - {importer}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the pipelines modules it imports, for every module of pipelines/."""
    root = Path(root)
    return {module_name(path, root): imported_modules(path, root) for path in sorted((root / PACKAGE).rglob("*.py"))}


def closure(start: list[Path], root: Path) -> list[Path]:
    """The files of pipelines/ that the start files need, with each package's __init__ on the way, sorted."""
    root = Path(root)
    todo = [name for path in start for name in imported_modules(path, root)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts))]
        todo += imported_modules(module_file(name, root), root)
    return sorted(module_file(name, root) for name in seen)
