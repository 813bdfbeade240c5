"""Which components serve each task, and loading the fitted ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipelines.core.config import Settings, section
from pipelines.models import rankers


class RankingParams(BaseModel):
    """Which components serve each task, and how the fused ranking pools candidates."""

    model_config = ConfigDict(extra="forbid")

    search_components: list[str] = ["bm25", "dense", "popularity"]
    search_reranker: str | None = None  # re-ranks the fused search top (evaluate only); None = no re-ranking
    rerank_depth: int = Field(20, ge=1)  # fused candidates per query the re-ranker re-orders
    title_features: bool = True  # the search stack also learns how each candidate's title matches the query
    recommend_components: list[str] = ["popularity", "itemcf", "relations", "sasrec", "dense"]
    candidates_per_component: int = Field(50, ge=1)
    eval_ks: list[int] = [1, 3, 5, 10, 20]


def ranking_params(settings: Settings) -> RankingParams:
    return section(settings, "ranking", RankingParams)


def components_needed(params: RankingParams) -> list[str]:
    reranker = [params.search_reranker] if params.search_reranker else []
    return list(dict.fromkeys(params.search_components + params.recommend_components + reranker))


def load_components(models_dir: Path, names: list[str]) -> dict:
    return {name: rankers.load(name, Path(models_dir) / name) for name in names}


