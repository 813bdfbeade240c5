"""The serving section of params.yaml, typed (pipelines/core/params.py): packed into the bundle by the package stage."""

from __future__ import annotations

from pipelines.core.params import (
    BanditParams,
    BatchingParams,
    CacheParams,
    ServingParams,
)

__all__ = ["BanditParams", "BatchingParams", "CacheParams", "ServingParams"]
