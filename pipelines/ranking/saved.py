"""Saving a fitted feature matcher beside the stack that reads it (one joblib file in the task's fusion folder)."""

from __future__ import annotations

from pathlib import Path


class SavedBesideStack:
    """`save` writes the whole object to FILE in a folder; `load` reads it back, or None where none was saved
    (a stack without that matcher)."""

    FILE: str

    def save(self, folder: Path) -> None:
        import joblib

        Path(folder).mkdir(parents=True, exist_ok=True)
        joblib.dump(self, Path(folder) / self.FILE)

    @classmethod
    def load(cls, folder: Path):
        import joblib

        path = Path(folder) / cls.FILE
        return joblib.load(path) if path.is_file() else None
