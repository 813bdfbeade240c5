"""The model bundle: every artifact the service needs, in one folder, with a checksum manifest.

Layout (written by the package stage, read by the service):
  manifest.json   revision, created, params of serving, metrics of the run, sha256 of every other file
  items.parquet   the catalog in position order (features)
  histories.parquet  user pseudonym -> item positions, oldest first (every known interaction)
  recall/<component>/...  fitted recall components
  fusion/<task>/...       fitted fusions
  student/...     the distilled query encoder (optional)
A missing or altered file makes `verify` raise a DataError naming it: the service refuses to start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipelines.core.errors import DataError

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST)


def user_histories(interactions: pd.DataFrame) -> pd.DataFrame:
    """One row per user: the item positions of every interaction, oldest first."""
    ordered = interactions.sort_values(["timestamp"], kind="stable")
    grouped = ordered.groupby("user", sort=True)["item"].agg(lambda items: [int(item) for item in items])
    return pd.DataFrame({"user": grouped.index.astype(str), "items": grouped.to_list()})


def _teacher_weights(folder: str, names: list[str]) -> list[str]:
    """With a student encoding the queries, the dense teacher's weights are dead weight: its item
    embeddings and index are precomputed (smaller bento, faster checksum at start)."""
    return ["model"] if "item_embeddings.npy" in names else []


def _scripted_student_weights(student_dir: Path):
    """With the student's TorchScript encoder (encoder.pt) the service never reads its transformer weights."""
    from pipelines.models.student import MODEL_FOLDER, SCRIPTED_FILE

    model_dir = (student_dir / MODEL_FOLDER).resolve()

    def ignore(folder: str, names: list[str]) -> list[str]:
        if not (student_dir / SCRIPTED_FILE).exists() or Path(folder).resolve() != model_dir:
            return []
        return [name for name in names if name in ("model.safetensors", "pytorch_model.bin")]

    return ignore


def assemble(features_dir: Path, recall_dir: Path, fusion_dir: Path, student_dir: Path | None, out_dir: Path,
             components: list[str], revision: str, serving_params: dict, metrics: dict) -> dict:
    """Copy what serving needs into out_dir and write the manifest; returns the manifest."""
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    shutil.copy2(features_dir / "items.parquet", out_dir / "items.parquet")
    user_histories(pd.read_parquet(features_dir / "interactions.parquet")).to_parquet(
        out_dir / "histories.parquet", index=False)
    with_student = student_dir is not None and Path(student_dir).exists() and \
        serving_params.get("serving", {}).get("use_student", True)
    for name in components:
        ignore = _teacher_weights if name == "dense" and with_student else None
        shutil.copytree(Path(recall_dir) / name, out_dir / "recall" / name, ignore=ignore)
    shutil.copytree(fusion_dir, out_dir / "fusion")
    if student_dir is not None and Path(student_dir).exists():
        shutil.copytree(student_dir, out_dir / "student", ignore=_scripted_student_weights(Path(student_dir)))
    manifest = {
        "format": FORMAT, "revision": revision, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "components": components, "serving": serving_params, "metrics": metrics,
        "files": {str(path.relative_to(out_dir)): file_digest(path) for path in _files(out_dir)},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def verify(folder: Path) -> dict:
    """The manifest, after checking every listed file exists and is unchanged; DataError otherwise."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise DataError(f"{manifest_path}: model bundle manifest not found (build it with `dvc repro package`)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: bundle format {manifest.get('format')!r}, this service reads {FORMAT}")
    _check_serving_params(manifest_path, manifest)
    for relative, expected in files.items():
        path = folder / relative
        if not path.exists():
            raise DataError(f"{path}: model artifact missing")
        if file_digest(path) != expected:
            raise DataError(f"{path}: model artifact corrupted (sha256 differs from {MANIFEST})")
    return manifest


def verified_marker(folder: Path, clock=time.time) -> str:
    """What a process that has just verified the bundle passes on to the processes it starts (an environment
    variable): who, when, and the digest of the manifest it checked."""
    return f"{os.getpid()}:{int(clock())}:{file_digest(Path(folder) / MANIFEST)}"  # whole seconds, never ahead


def recently_verified(folder: Path, marker: str | None, max_age_s: float, clock=time.time) -> dict | None:
    """The manifest without computing checksums again, when `marker` says that this process's parent verified
    this very manifest at most max_age_s ago (the serving process, just before it started its workers) and every
    listed file is still there; None otherwise (verify then checks everything: a worker restarted later,
    another bundle, a marker inherited from elsewhere)."""
    folder = Path(folder)
    try:
        pid, stamp, digest = (marker or "").split(":", 2)
        parent, age = int(pid) == os.getppid(), clock() - float(stamp)
    except ValueError:
        return None
    manifest_path = folder / MANIFEST
    if not parent or not 0 <= age <= max_age_s or not manifest_path.exists() or file_digest(manifest_path) != digest:
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not all((folder / relative).exists() for relative in manifest.get("files", {})):
        return None
    _check_serving_params(manifest_path, manifest)
    return manifest


def _check_serving_params(manifest_path: Path, manifest: dict) -> None:
    """The packed params must fit this code's models: a mismatch is a clear refusal, not a crash loop."""
    from pydantic import ValidationError

    from pipelines.core.params import PrivacyParams
    from pipelines.feedback import FeedbackParams
    from pipelines.serving.params import ServingParams

    stored = manifest.get("serving") or {}
    for key, model in (("serving", ServingParams), ("feedback", FeedbackParams), ("privacy", PrivacyParams)):
        try:
            model.model_validate(stored.get(key, {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in (key, *first["loc"]))
            raise DataError(f"{manifest_path}: packed params field {field}: {first['msg']} "
                            "(bundle built by another version: run the package stage again)") from None
