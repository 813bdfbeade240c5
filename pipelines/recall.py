"""Recall: fit every recall component on the training split and save each under models/recall/<name>/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipelines import rankers
from pipelines.config import Settings, section
from pipelines.features import load_training_data
from pipelines.logs import get_logger

log = get_logger(__name__)


class RankingParams(BaseModel):
    """Which components serve each task, and how the fused ranking pools candidates."""

    model_config = ConfigDict(extra="forbid")

    search_components: list[str] = ["bm25", "dense", "popularity"]
    search_reranker: str | None = None  # re-ranks the fused search top (evaluate only); None = no re-ranking
    recommend_components: list[str] = ["popularity", "itemcf", "relations", "sasrec", "dense"]
    candidates_per_component: int = Field(50, ge=1)
    eval_ks: list[int] = [1, 3, 5, 10, 20]


def ranking_params(settings: Settings) -> RankingParams:
    return section(settings, "ranking", RankingParams)


def components_needed(params: RankingParams) -> list[str]:
    reranker = [params.search_reranker] if params.search_reranker else []
    return list(dict.fromkeys(params.search_components + params.recommend_components + reranker))


def fit_recall(features_dir: Path, models_dir: Path, settings: Settings) -> dict:
    """Fit and save each component the ranking uses; return seconds per component."""
    data = load_training_data(features_dir, ("train",))
    models_dir = Path(models_dir)
    shutil.rmtree(models_dir, ignore_errors=True)
    seconds = {}
    for name in components_needed(ranking_params(settings)):
        started = time.perf_counter()
        component = rankers.make(name, settings).fit(data)
        component.save(models_dir / name)
        seconds[name] = round(time.perf_counter() - started, 2)
        log.info("component fitted", extra={"component": name, "seconds": seconds[name]})
    (models_dir / "components.json").write_text(json.dumps({"components": seconds}, indent=2) + "\n")
    return seconds


def load_components(models_dir: Path, names: list[str]) -> dict:
    return {name: rankers.load(name, Path(models_dir) / name) for name in names}
