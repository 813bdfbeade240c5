"""ShopFusion's BentoML service: a thin shell over pipelines.serving.app.ShopFusionApp.

The model bundle comes from the BentoML model store (`shopfusion-bundle`, packed into the bento by
`dvc repro package`), or from the folder SHOPFUSION_BUNDLE names (development and tests).
Built-in probes: GET /healthz, /livez, /readyz (ready once the bundle is verified and loaded);
Prometheus metrics: GET /metrics; OpenAPI: GET /docs.json.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import bentoml
import orjson
from starlette.responses import Response

from pipelines.core.errors import DataError
from pipelines.core.logs import configure, get_logger
from pipelines.serving.batching import LoopBatcher
from pipelines.serving.connections import ConnectionRecycler
from pipelines.serving.schemas import (
    ContextItemIds,
    EventRows,
    EventsResponse,
    EventType,
    FeedbackResponse,
    Identifier,
    ItemRows,
    ItemsResponse,
    K,
    OptionalIdentifier,
    RankedResponse,
    SearchFilters,
    SimilarResponse,
    Text,
)
from pipelines.serving.limits import LimitMiddleware
from pipelines.serving.live import LIVE_UNAVAILABLE
from pipelines.serving.security import GuardMiddleware, bound_metric_paths, document_refusals, redact_request_errors
from pipelines.serving.slow_clients import BodyDeadline, cut_slow_headers

log = get_logger("service")
API_PATHS = ["/search", "/recommend", "/similar", "/feedback", "/events", "/items"]
BUNDLE_MODEL = "shopfusion-bundle"
DEVELOPMENT_BUNDLE = os.environ.get("SHOPFUSION_BUNDLE")
PACKED_BUNDLE = None if DEVELOPMENT_BUNDLE else bentoml.models.BentoModel(f"{BUNDLE_MODEL}:latest")


def _serving_params(manifest: dict):
    from pipelines.serving.params import ServingParams

    return ServingParams.model_validate(manifest["serving"]["serving"])


def _checked_bundle() -> tuple[Path, dict]:
    """The bundle and its manifest, verified (and an API key found) when this module is imported, in the serving
    process before any worker starts: a missing or corrupted artifact or no key stops `bentoml serve` at once
    with one clear line (a worker failing in __init__ would only be restarted, again and again). The workers
    it starts within VERIFIED_MAX_AGE_S inherit a marker of that check and skip the checksums (twice ~1 s of CPU
    each on Home Depot's bundle: here and in the app); a worker restarted later verifies everything again."""
    from pipelines.feedback.log import FeedbackLog
    from pipelines.serving.bundle import recently_verified, verified_marker, verify
    from pipelines.serving.security import require_api_keys

    try:
        bundle = Path(DEVELOPMENT_BUNDLE) if DEVELOPMENT_BUNDLE else Path(PACKED_BUNDLE.resolve().path)
        in_worker = getattr(bentoml.server_context, "worker_index", None) is not None
        manifest = recently_verified(bundle, os.environ.get(VERIFIED_ENV), VERIFIED_MAX_AGE_S) if in_worker else None
        if manifest is None:
            manifest = verify(bundle)
            os.environ[VERIFIED_ENV] = verified_marker(bundle)  # BentoML's workers copy this environment
        if os.environ.get("SHOPFUSION_PACKAGING") != "1":  # `bentoml build` imports this module too: no keys there
            require_api_keys()
            FeedbackLog(FEEDBACK_DIR).close()  # an unwritable folder: one line here, not a worker restarted forever
    except DataError as exc:
        print(f"shopfusion: refusing to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    return bundle, manifest


VERIFIED_ENV = "SHOPFUSION_VERIFIED_BUNDLE"
FEEDBACK_DIR = Path(os.environ.get("SHOPFUSION_FEEDBACK_DIR", "data/feedback"))
VERIFIED_MAX_AGE_S = 120
_bundle, _manifest = _checked_bundle()
_limits = _serving_params(_manifest)
# threads per worker: 1 measured fastest on 2 cores (552 vs 455 requests/s for one worker); with more,
# concurrent requests of a worker share micro-batches of query encodings
THREADS = int(os.environ.get("SHOPFUSION_THREADS", "1"))


# objects allocated between automatic collections of the youngest generation (CPython's default: 700)
GC_YOUNG_THRESHOLD = 10_000


def _settle_garbage_collector() -> None:
    """The loaded bundle (~325k objects on Home Depot) moved out of the collector's reach: a full collection
    walked all of it (170-220 ms of a stalled worker, once every few thousand requests); young collections made
    rarer (3,000 Zipf searches in process: 253 ms in the collector, 223 ms of it one full collection -> 15 ms)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@bentoml.service(
    name="shopfusion",
    workers=int(os.environ.get("SHOPFUSION_WORKERS", "2")),
    threads=THREADS,
    traffic={"timeout": 30},
    # one JSON line per request comes from the app itself (pseudonymized); BentoML's own access line is off
    logging={"access": {"enabled": os.environ.get("SHOPFUSION_ACCESS_LOG") == "1"}},
    http={"port": int(os.environ.get("SHOPFUSION_PORT", "3000"))},
    # BentoML opens ~5 OpenTelemetry spans a request even when none is exported (sample rate 0 by default)
    tracing={"excluded_urls": [] if _limits.trace_requests else API_PATHS},
)
class ShopFusion:
    bundle_model = PACKED_BUNDLE  # a class attribute: BentoML packs the model into the bento

    def __init__(self) -> None:
        from pipelines.serving.app import FeedbackNotRecorded, ShopFusionApp, StreamUnavailable

        self._feedback_not_recorded, self._stream_unavailable = FeedbackNotRecorded, StreamUnavailable

        configure()
        redact_request_errors()
        self.threads, self._limiter = THREADS, None
        worker = getattr(bentoml.server_context, "worker_index", None) or 0
        try:
            self.app = ShopFusionApp(
                _bundle, manifest=_manifest, worker=worker,
                state_dir=Path(os.environ.get("SHOPFUSION_STATE_DIR", ".shopfusion/serving")),
                feedback_dir=FEEDBACK_DIR,
                redis_url=os.environ.get("SHOPFUSION_REDIS_URL") or None)
        except DataError as exc:
            print(f"shopfusion: refusing to start: {exc}", file=sys.stderr, flush=True)
            log.error("refusing to start", extra={"reason": str(exc)})
            raise SystemExit(3) from None
        _settle_garbage_collector()
        batching = self.app.params.batching
        on_loop = batching.on_loop and THREADS == 1
        self.search_batcher = LoopBatcher(self.app.rank_searches, batching.max_batch) if on_loop else None
        self.recommend_batcher = LoopBatcher(self.app.rank_recommends, batching.max_batch) if on_loop else None
        self.fallbacks = bentoml.metrics.Counter(name="shopfusion_fallbacks", documentation="answers given by a fallback",
                                                 labelnames=["endpoint", "kind"])
        cache_lookups = bentoml.metrics.Counter(name="shopfusion_cache", documentation="hot-request cache lookups",
                                                labelnames=["result"])
        # each label set's child looked up once (a labels() call a request was ~1.5 % of a worker's time)
        self.cache_results = {True: cache_lookups.labels(result="hit"), False: cache_lookups.labels(result="miss")}
        self.feedback_events = bentoml.metrics.Counter(name="shopfusion_feedback_events",
                                                       documentation="feedback events logged", labelnames=["event_type"])
        live_unavailable = bentoml.metrics.Counter(
            name="shopfusion_live_unavailable", labelnames=["endpoint"],
            documentation="answers given from the bundle alone: the live state was unreachable")
        self.live_unavailable = {endpoint: live_unavailable.labels(endpoint=endpoint) for endpoint in ("search", "recommend")}
        self.events_accepted = bentoml.metrics.Counter(name="shopfusion_events_accepted",
                                                       documentation="events POST /events published to the stream",
                                                       labelnames=["source"]).labels(source="api")
        self.items_updated = bentoml.metrics.Counter(name="shopfusion_items_updated",
                                                     documentation="products POST /items added or changed")
        served_log_failures = bentoml.metrics.Counter(name="shopfusion_served_log_failures", labelnames=["error"],
                                                      documentation="answered lists the served log could not hold")
        self.app.on_served_log_failure = lambda error: served_log_failures.labels(error=error).inc()
        if self.app.bandit is not None:
            skipped = bentoml.metrics.Counter(name="shopfusion_log_lines_skipped", labelnames=["file"],
                                              documentation="damaged feedback-log lines the bandit passed over")
            self.app.bandit.on_skipped = lambda name: skipped.labels(file=name).inc()

    def __is_ready__(self) -> bool:
        return hasattr(self, "app")

    def _ranked_response(self, endpoint: str, answer: dict) -> Response:
        """The answer, counted, as RankedResponse's JSON (the model the API is annotated with gives BentoML's
        OpenAPI document; tests validate every body against it). orjson writes it in one step, where returning
        the model would validate the dict with pydantic, then dump it twice (BentoML's to_http_response):
        ~10 % of a worker's samples on cache hits (benchmarks/README.md)."""
        self.cache_results[bool(answer["cached"])].inc()
        if LIVE_UNAVAILABLE in answer["notes"]:
            self.live_unavailable[endpoint].inc()
        if answer.get("fallback"):
            self.fallbacks.labels(endpoint=endpoint, kind=answer["fallback"]).inc()
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _run(self, function, *args):
        """With one thread per worker (the default), on the event loop itself, with no hand-off to a thread and
        no GIL contention with it (on 2 cores: p95 43.7 vs 56.7 ms through a thread, 86.5 ms with cache hits on
        the loop and misses in a thread; benchmarks/README.md); /search misses are batched there (search()).
        With more threads, in a thread pool of that size: concurrent requests then share micro-batches."""
        if self.threads == 1:
            return function(*args)
        return await self._in_thread(function, *args)

    async def _in_thread(self, function, *args):
        """Off the event loop, at most `threads` calls of this worker at a time."""
        if self._limiter is None:  # made on the event loop: anyio binds it to the running loop
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=self._limiter)

    @bentoml.api(route="/search")
    async def search(self, query: Text, k: K = 10, user_id: OptionalIdentifier = None,
                     filters: SearchFilters | None = None) -> RankedResponse:
        """Ranked items for a query, each with its score and every component's contribution to it."""
        chosen = filters.model_dump() if filters else None
        if self.search_batcher is not None:  # a cache hit answered at once, misses ranked in batches
            call = self.app.begin_search(query, k, user_id, chosen)
            if call.ranked is None:
                await self.search_batcher.submit(call)
            answer = self.app.finish_search(call)
        else:
            answer = await self._run(self.app.search, query, k, user_id, chosen)
        return self._ranked_response("search", answer)

    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: Identifier, k: K = 10, context_item_ids: ContextItemIds = None
                        ) -> RankedResponse:
        """Next items for a user; an unknown user (or one without history) gets popular items."""
        if self.recommend_batcher is not None:  # a cache hit or a cold start answered at once, misses ranked in batches
            call = self.app.begin_recommend(user_id, k, context_item_ids)
            if call.ranked is None:
                await self.recommend_batcher.submit(call)
            answer = self.app.finish_recommend(call)
        else:
            answer = await self._run(self.app.recommend, user_id, k, context_item_ids)
        return self._ranked_response("recommend", answer)

    @bentoml.api(route="/similar")
    async def similar(self, item_id: Identifier, k: K = 10) -> SimilarResponse:
        """Complements (bought together) and substitutes of an item; an unknown item gets popular items."""
        answer = await self._run(self.app.similar, item_id, k)
        if answer.get("fallback"):
            self.fallbacks.labels(endpoint="similar", kind=answer["fallback"]).inc()
        return SimilarResponse.model_validate(answer)

    @bentoml.api(route="/feedback")
    async def feedback(self, request_id: Identifier, user_id: Identifier, item_id: Identifier,
                       event_type: EventType) -> FeedbackResponse:
        """Records a user's reaction to a served item; durable (fsynced, off the event loop) before the answer."""
        try:
            answer = await self._in_thread(self.app.feedback, request_id, user_id, item_id, event_type)
        except self._feedback_not_recorded as exc:  # not durable, so not acknowledged: the client retries
            return _unavailable(exc)
        self.feedback_events.labels(event_type=event_type).inc()
        return FeedbackResponse.model_validate(answer)

    @bentoml.api(route="/events")
    async def events(self, events: EventRows) -> EventsResponse:
        """Shoppers' events from the shop's own systems (at most stream.max_batch a call), each checked against the
        raw events contract, user ids pseudonymized, published to the live stream; a bad row refuses the batch
        with 422 naming its row and field; 503 with Retry-After when the stream is unreachable."""
        try:
            answer = await self._in_thread(self.app.events, events)
        except self._stream_unavailable as exc:
            return _unavailable(exc)
        if answer["errors"]:
            return _refused("events", answer["errors"])
        self.events_accepted.inc(answer["accepted"])
        return EventsResponse(accepted=answer["accepted"])

    @bentoml.api(route="/items")
    async def items(self, items: ItemRows) -> ItemsResponse:
        """New or changed products (price, stock, text; removed) from the shop's catalog: every worker ranks over
        them within stream.catalog_poll_ms plus their encoding; a new product is searchable (BM25 and dense, by
        the serving encoder) and recommendable, one out of stock or removed leaves every answer. A bad row
        refuses the batch with 422 naming its row and field; 503 with Retry-After when Redis is unreachable."""
        try:
            answer = await self._in_thread(self.app.items, items)
        except self._stream_unavailable as exc:
            return _unavailable(exc)
        if answer["errors"]:  # valid in shape, not against the catalog's state (a new product without a title)
            return _refused("items", answer["errors"], status=409)
        self.items_updated.inc(answer["accepted"])
        return ItemsResponse(accepted=answer["accepted"], catalog_version=answer["catalog_version"])

    @bentoml.on_shutdown
    def _close(self) -> None:
        if hasattr(self, "app"):
            self.app.close()


def _unavailable(exc: Exception) -> Response:
    """503 with Retry-After: nothing was recorded (the feedback log or the stream cannot take it now)."""
    return Response(orjson.dumps({"error": str(exc)}), status_code=503, media_type="application/json",
                    headers={"Retry-After": "5"})


def _refused(name: str, errors: list[dict], status: int = 422) -> Response:
    """422 (or `status`) naming each bad row and field, as the API's own validation errors do (loc [name, row,
    field])."""
    detail = [{"loc": [name, *(part for part in (error["row"], error["field"]) if part is not None)],
               "msg": error["msg"], "type": "contract"} for error in errors]
    return Response(orjson.dumps({"error": f"invalid {name}: nothing of the batch was accepted", "detail": detail}),
                    status_code=status, media_type="application/json")


_cut = bentoml.metrics.Counter(name="shopfusion_slow_clients_cut", labelnames=["phase"],
                               documentation="connections closed for headers or a body not in by its deadline")
# first of the service's middlewares: outside GuardMiddleware, which reads the body
ShopFusion.add_asgi_middleware(BodyDeadline, timeout_s=_limits.slow_clients.body_timeout_s,
                               on_cut=lambda phase: _cut.labels(phase=phase).inc())
cut_slow_headers(_limits.slow_clients.header_timeout_s, on_cut=lambda phase: _cut.labels(phase=phase).inc())
_auth_failures = bentoml.metrics.Counter(name="shopfusion_auth_failures", labelnames=["reason"],
                                         documentation="requests refused for a missing or invalid API key")
ShopFusion.add_asgi_middleware(GuardMiddleware, api_paths=API_PATHS, public_paths=_limits.public_paths,
                               max_body_bytes=_limits.max_body_bytes,
                               body_bytes_of_path={path: _manifest["serving"].get("stream", {}).get(
                                   "max_body_bytes", _limits.max_body_bytes) for path in ("/events", "/items")},
                               on_denied=lambda reason: _auth_failures.labels(reason=reason).inc())
_limited = bentoml.metrics.Counter(name="shopfusion_limited", labelnames=["reason"],
                                   documentation="API requests answered 429: over the key's rate or the worker's cap")
ShopFusion.add_asgi_middleware(LimitMiddleware, api_paths=API_PATHS, rate_per_second=_limits.limits.rate_per_second,
                               burst=_limits.limits.burst, max_concurrent=_limits.limits.max_concurrent,
                               on_limited=lambda reason: _limited.labels(reason=reason).inc())
ShopFusion.add_asgi_middleware(ConnectionRecycler, max_requests=_limits.max_requests_per_connection)
bound_metric_paths(API_PATHS + list(_limits.public_paths))
document_refusals(ShopFusion, API_PATHS, {"/items": {
    409: "a product the catalog does not hold needs a title: detail names the row and field"}})
