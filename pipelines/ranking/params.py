"""Which components serve each task, and loading the fitted ones."""

from __future__ import annotations

from pathlib import Path

from pipelines.core.params import RankingParams
from pipelines.models import rankers


def components_needed(params: RankingParams) -> list[str]:
    reranker = [params.search_reranker] if params.search_reranker else []
    return list(dict.fromkeys(params.search_components + params.recommend_components + reranker))


def load_components(models_dir: Path, names: list[str]) -> dict:
    return {name: rankers.load(name, Path(models_dir) / name) for name in names}


