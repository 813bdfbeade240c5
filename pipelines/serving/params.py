"""The serving section of params.yaml, typed: packed into the bundle by the package stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BatchingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch: int = Field(16, ge=1)  # query encodings run together at most
    max_wait_ms: float = Field(2.0, ge=0)  # how long the first query of a batch may wait for company
    # one thread per worker: rank the cache misses that reach the event loop together in one batch (hits are
    # answered at once). Same-run A/B on 2 cores at 8 concurrent: +9-11 % requests/s with Zipf queries at the
    # same p95, +19-28 % requests/s and p95 -6-29 % with queries never seen (benchmarks/README.md)
    on_loop: bool = True


class CacheParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(4096, ge=0)  # entries of each worker's LRU and of the shared store (0: no cache)
    ttl_seconds: float = Field(300.0, gt=0)
    shared: bool = True  # without Redis, the workers of a host share entries (SQLite file in the state folder)
    redis_prefix: str = "shopfusion:"


class BanditParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    policy: Literal["linucb", "thompson", "epsilon_greedy"] = "linucb"
    warmup_updates: int = Field(200, ge=0)  # serve the fused order (with exploration) until this many updates
    settle_seconds: float = Field(30.0, ge=0)  # feedback of a served list counts once it is this old
    poll_seconds: float = Field(1.0, gt=0)  # how often each worker reads new feedback from the log
    # how often a worker saves its state (policy, log offsets, unsettled lists): a save holds the unsettled
    # lists of the last settle_seconds, megabytes under load, so it is timed, not counted
    save_seconds: float = Field(60.0, gt=0)


class ServingParams(BaseModel):
    """params.yaml `serving:`."""

    model_config = ConfigDict(extra="forbid")
    # the fitted fusion that orders each task's lists
    fusion: dict[Literal["search", "recommend"], Literal["lambdarank", "weighted"]] = {
        "search": "lambdarank", "recommend": "weighted"}
    max_k: int = Field(100, ge=1)
    similar_neighbors: int = Field(50, ge=1)  # dense neighbours searched for substitutes
    use_student: bool = True  # the distilled, quantized query encoder when the bundle has one
    encoder_threads: int = Field(1, ge=1)
    max_body_bytes: int = Field(16384, ge=256)
    # a keep-alive connection is closed after this many responses, so the workers share the load (connections.py)
    max_requests_per_connection: int = Field(8, ge=1)
    # OpenTelemetry spans of API requests (for a configured tracing exporter); off, BentoML's ~5 unexported
    # spans a request are not made
    trace_requests: bool = False
    public_paths: list[str] = ["/healthz", "/livez", "/readyz"]
    feedback_dir: str = "data/feedback"  # SHOPFUSION_FEEDBACK_DIR overrides
    batching: BatchingParams = BatchingParams()
    cache: CacheParams = CacheParams()
    bandit: BanditParams = BanditParams()


