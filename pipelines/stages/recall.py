"""Recall: fit every recall component on the training split and save each under models/recall/<name>/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pipelines.core.config import Settings
from pipelines.core.logs import get_logger
from pipelines.data.dataset import load_training_data
from pipelines.models import rankers
from pipelines.ranking.params import components_needed

log = get_logger(__name__)


def fit_recall(features_dir: Path, models_dir: Path, settings: Settings) -> dict:
    """Fit and save each component the ranking uses; return seconds per component."""
    data = load_training_data(features_dir, ("train",))
    models_dir = Path(models_dir)
    shutil.rmtree(models_dir, ignore_errors=True)
    seconds = {}
    for name in components_needed(settings.ranking):
        started = time.perf_counter()
        component = rankers.make(name, settings).fit(data)
        component.save(models_dir / name)
        seconds[name] = round(time.perf_counter() - started, 2)
        log.info("component fitted", extra={"component": name, "seconds": seconds[name]})
    (models_dir / "components.json").write_text(json.dumps({"components": seconds}, indent=2) + "\n")
    return seconds


