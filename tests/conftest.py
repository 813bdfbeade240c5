"""Shared fixtures: a tiny generated shop pushed through validate and clean once per session."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

from pipelines.bench.served import free_port  # noqa: E402,F401  (tests import it from here)

os.environ.setdefault("SHOPFUSION_PII_KEY", "test-key-not-secret")
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1"),
                    ("BENTOML_DO_NOT_TRACK", "true"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(name, value)

TINY_SAMPLE = {"n_items": 300, "n_users": 150, "n_queries": 80, "days": 30}
# The finetune stage in a few seconds: two steps of small batches per model.
TINY_LOOP = {"max_steps": 2, "batch_size": 8, "max_seq_length": 24}
# The distill stage in a few seconds.
TINY_DISTILL = {"rank_weight": 1.0, "steps": 4, "batch_size": 8, "max_item_texts": 40, "max_seq_length": 24, "timing_queries": 3,
                "timing_repeats": 1, "threads": 2}
TINY_FINETUNE = {"bi_encoder": TINY_LOOP, "cross_encoder": TINY_LOOP, "max_recommend_pairs": 64, "log_every": 1}


# What the tests change of params.yaml besides the sample's size: no artifact of the repository's own run
# (the text models are the packaged MiniLM, not models/finetune), no re-ranking by an untrained cross-encoder
# (slow on CPU), no fine-tuning checkpoints under the repository's models/.
TINY_PARAMS = {"sample": TINY_SAMPLE,
               "text": {"dense": {"model_path": None}, "cross_encoder": {"model_path": None}},
               "ranking": {"search_reranker": None},
               "finetune": {"checkpoint_dir": None}}


def merged(base: dict, changes: dict, model=None) -> dict:
    """base (the dump of a params model, Settings by default) with changes applied key by key: a dict given
    for a subsection merges into it, anything else (a value, a list, a mapping such as event_weights) replaces."""
    import inspect

    from pydantic import BaseModel

    from pipelines.core.config import Settings

    model = model or Settings
    fields = {(field.alias or name): field for name, field in model.model_fields.items()}
    out = dict(base)
    for key, value in changes.items():
        inner = fields[key].annotation if key in fields else None
        if isinstance(value, dict) and isinstance(out.get(key), dict) and inspect.isclass(inner) \
                and issubclass(inner, BaseModel):
            out[key] = merged(out[key], value, inner)
        else:
            out[key] = value
    return out


def with_sections(settings, **sections):
    """A copy of settings with params.yaml sections changed: a dict given for a section updates its keys
    (nested dicts merge too), e.g. ranking={"search_components": [...]}, distill=TINY_DISTILL."""
    from pipelines.core.config import Settings

    return Settings.model_validate(merged(settings.model_dump(by_alias=True), sections))


@functools.lru_cache(maxsize=1)
def repo_settings():
    """The repository's params.yaml, loaded (and so validated) once."""
    from pipelines.core.config import load_settings

    return load_settings(REPO / "params.yaml")


def params_section(dotted: str, **changes):
    """A section of the repository's params.yaml (e.g. "text.bm25"), typed, with `changes` to its keys."""
    node = repo_settings()
    for part in dotted.split("."):
        node = getattr(node, "validate_" if part == "validate" else part)
    return type(node).model_validate(merged(node.model_dump(), changes, type(node))) if changes else \
        node.model_copy(deep=True)


def write_params_file(path: Path, **sections) -> Path:
    """The repository's params.yaml with sections changed as in with_sections, written to path."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump(merged(raw, sections), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def params_settings():
    """The repository's params.yaml as Settings: what `dvc repro` runs with."""
    return repo_settings().model_copy(deep=True)


@pytest.fixture(scope="session")
def tiny_settings(params_settings):
    """params.yaml with a tiny sample shop and TINY_PARAMS."""
    return with_sections(params_settings, **TINY_PARAMS)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_settings):
    """Raw, validated and clean folders of a tiny sample shop."""
    from pipelines.stages.clean import clean
    from pipelines.stages.ingest import ingest
    from pipelines.stages.validate import validate

    root = tmp_path_factory.mktemp("tiny_shop")
    paths = {"raw": root / "raw", "validated": root / "validated", "clean": root / "clean"}
    ingest("sample", paths["raw"], tiny_settings)
    paths["summary"] = validate(paths["raw"], paths["validated"], tiny_settings)
    paths["clean_stats"] = clean(paths["validated"] / "valid", paths["clean"], tiny_settings)
    return paths


SERVING_RANKING = {"search_components": ["bm25", "dense", "popularity"],
                   "recommend_components": ["popularity", "itemcf", "dense"],
                   "candidates_per_component": 30, "eval_ks": [5, 10]}


# Each fusion named, not `auto`: the serving tests check the weighted fusion's explanations on /recommend and
# the stack's (group Shapley) on /search, whichever fusion the tiny shop's CV would pick.
SERVING_FUSIONS = {"fusion": {"search": "lambdarank", "recommend": "weighted"}}


@pytest.fixture(scope="session")
def serving_settings(tiny_settings):
    return with_sections(tiny_settings, ranking=SERVING_RANKING, serving=SERVING_FUSIONS)


def bundle_run(tiny_run, settings, root: Path, version: str, empty_table: str | None = None) -> dict:
    """The tiny shop (with one clean table emptied, if named) through features, recall, fuse and evaluate, and
    into a serving bundle (serving/bundle.py layout)."""
    import shutil

    import pandas as pd

    from pipelines.serving.bundle import assemble
    from pipelines.stages.evaluate import evaluate
    from pipelines.stages.features import build_features
    from pipelines.stages.fuse import fit_fusion
    from pipelines.stages.package import bundle_contents
    from pipelines.stages.recall import fit_recall

    clean = tiny_run["clean"]
    if empty_table:
        clean = root / "clean"
        shutil.copytree(tiny_run["clean"], clean)
        table = clean / f"{empty_table}.parquet"
        pd.read_parquet(table).iloc[:0].to_parquet(table, index=False)
    build_features(clean, root / "features", settings)
    fit_recall(root / "features", root / "recall", settings)
    summary = fit_fusion(root / "features", root / "recall", root / "fusion", settings)
    metrics = evaluate(root / "features", root / "recall", root / "fusion", root / "metrics.json", root / "plot.csv",
                       settings)
    contents = bundle_contents(settings)
    manifest = assemble(root / "features", root / "recall", root / "fusion", None, root / "bundle",
                        contents["components"], version, contents, metrics)
    return {"root": root, "settings": settings, "summary": summary, "metrics": metrics, "manifest": manifest,
            "features": root / "features", "bundle": root / "bundle"}


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, serving_settings, tmp_path_factory):
    """A serving bundle of the tiny shop: features, recall, fusion, metrics."""
    return bundle_run(tiny_run, serving_settings, tmp_path_factory.mktemp("serving"), "test")


# No behaviour events (like Home Depot: catalog and judged queries only): no recommend requests.
NO_EVENTS_RANKING = {"search_components": ["bm25", "popularity"], "recommend_components": ["popularity"],
                     "candidates_per_component": 30, "eval_ks": [5, 10]}


@pytest.fixture(scope="session")
def no_events_run(tiny_run, tiny_settings, tmp_path_factory):
    """The tiny shop without its events, into a serving bundle."""
    return bundle_run(tiny_run, with_sections(tiny_settings, ranking=NO_EVENTS_RANKING),
                      tmp_path_factory.mktemp("no_events"), "no-events", empty_table="events")


@contextlib.contextmanager
def served_app(bundle: Path, root: Path):
    """A ShopFusionApp over the bundle with its state and feedback under root; torch's thread count restored."""
    import torch

    from pipelines.serving.app import ShopFusionApp

    threads = torch.get_num_threads()
    served = ShopFusionApp(bundle, root / "state", root / "feedback")
    served.root = root
    try:
        yield served
    finally:
        served.close()
        torch.set_num_threads(threads)
