"""Shared fixtures: a tiny generated shop pushed through validate and clean once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("SHOPFUSION_PII_KEY", "test-key-not-secret")
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1"),
                    ("BENTOML_DO_NOT_TRACK", "true"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(name, value)

TINY_SAMPLE = {"n_items": 300, "n_users": 150, "n_queries": 80, "days": 30}


@pytest.fixture(scope="session")
def tiny_settings():
    from pipelines.config import Settings

    settings = Settings()
    settings.sample = settings.sample.model_copy(update=TINY_SAMPLE)
    return settings


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_settings):
    """Raw, validated and clean folders of a tiny sample shop."""
    from pipelines.clean import clean
    from pipelines.ingest import ingest
    from pipelines.validate import validate

    root = tmp_path_factory.mktemp("tiny_shop")
    paths = {"raw": root / "raw", "validated": root / "validated", "clean": root / "clean"}
    ingest("sample", paths["raw"], tiny_settings)
    paths["summary"] = validate(paths["raw"], paths["validated"], tiny_settings)
    paths["clean_stats"] = clean(paths["validated"] / "valid", paths["clean"], tiny_settings)
    return paths
