"""The served application: engine, cache, batching, bandit and feedback log behind four calls.

bentos/service.py is a thin BentoML shell over `ShopFusionApp`; tests drive it directly too.
Every served list is logged (feedback_log.py) with its per-slot propensities; /feedback is fsynced
before it is acknowledged. User ids reach logs and files only as keyed pseudonyms.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipelines.core.items import Request
from pipelines.core.logs import get_logger
from pipelines.core.params import PrivacyParams, StreamParams
from pipelines.feedback import FeedbackParams
from pipelines.feedback.log import FeedbackLog
from pipelines.feedback.policies import feature_names
from pipelines.serving.batching import MicroBatcher
from pipelines.serving.cache import SharedRedis, connect_redis, make_cache
from pipelines.serving.catalog import CatalogFollower, CatalogKeys, check_items, publish_items, stored_item_ids
from pipelines.serving.engine import (
    TASKS,
    Engine,
    Filters,
    Ranked,
    pii_key,
    pseudonymous_user,
)
from pipelines.serving.live import LIVE_UNAVAILABLE, Live, StreamUnavailable
from pipelines.serving.online import OnlineBandit, Poller
from pipelines.serving.params import ServingParams

log = get_logger(__name__)

RECENT_REQUESTS = 100_000  # request ids this worker remembers, to tell /feedback whether it served them
# A task the fuse stage skipped (its data had no requests) has no fusion in the bundle: its fallback and note.
NO_MODEL = {"search": "no_search_model", "recommend": "no_recommend_model"}
NO_MODEL_NOTES = {"search": "this bundle has no search model (its data had no judged queries): no results",
                  "recommend": "this bundle has no recommend model (its data had no recommend requests): "
                               "popular items"}


def load_query_encoder(bundle: Path, params: ServingParams, max_seq_length: int):
    """The distilled, quantized student when the bundle has one (and params allow), else the teacher."""
    student = bundle / "student"
    if params.use_student and student.exists():
        from pipelines.models.student import load_query_encoder as load_student

        return load_student(student, threads=params.encoder_threads).encode, "student"
    from pipelines.models.rankers.dense import load_encoder

    teacher = load_encoder(str(bundle / "recall" / "dense" / "dense" / "model"), max_seq_length, "auto")
    return (lambda texts: teacher.encode(texts, normalize_embeddings=True, convert_to_numpy=True)), "teacher"


SERVED_LOG_WARN_EVERY = 100
WARM_UP_QUERY = "warm up qwertyuiopz"  # an unknown word of 4+ letters: each spelling corrector builds its index


class FeedbackNotRecorded(RuntimeError):
    """A /feedback event that could not be written durably: nothing was acknowledged."""


@dataclass
class SearchCall:
    """One /search request between its cache lookup and its answer."""

    started: float
    user_id: str | None
    k: int
    request: Request
    filters: Filters
    key: str
    ranked: Ranked | None = None
    cached: bool = False
    fresh: list[tuple[str, str]] = field(default_factory=list)  # the user's events from the live stream
    notes: list[str] = field(default_factory=list)


@dataclass
class RecommendCall:
    """One /recommend request between its cache lookup and its answer."""

    started: float
    user_id: str
    k: int
    request: Request
    fresh: list[tuple[str, str]]  # the user's events from the live stream
    notes: list[str]
    ignored: list[str]  # context item ids the catalog does not hold
    key: str | None = None  # the cache key (None: a cold start, never cached)
    ranked: Ranked | None = None
    cached: bool = False


class ShopFusionApp:
    def __init__(self, bundle: Path, state_dir: Path, feedback_dir: Path, worker: int = 0,
                 redis_url: str | None = None, params: ServingParams | None = None, manifest: dict | None = None):
        """manifest: the bundle's, when the caller has just verified it (its checksums are not computed again)."""
        import torch

        from pipelines.serving.bundle import verify

        bundle = Path(bundle)
        manifest = manifest or verify(bundle)
        stored = manifest["serving"]
        self.params = params or ServingParams.model_validate(stored["serving"])
        torch.set_num_threads(self.params.encoder_threads)
        self.batcher, self.encoder_kind = None, None
        if "dense" in stored["components"]:
            encode, self.encoder_kind = load_query_encoder(bundle, self.params, stored["dense_max_seq_length"])
            batching = self.params.batching
            self.batcher = MicroBatcher(encode, batching.max_batch, batching.max_wait_ms)
        self.engine = Engine(bundle, self.params, encode=self.batcher, manifest=manifest)
        cache_params = self.params.cache
        self.redis = connect_redis(redis_url, cache_params.redis_timeout_ms / 1000, cache_params.redis_retry_seconds) \
            if redis_url else None
        self.cache = make_cache(cache_params, self.redis, Path(state_dir))
        self.key = pii_key(PrivacyParams.model_validate(stored["privacy"]))
        self._log_key = self.key or secrets.token_bytes(32)  # without the pipeline's key: unlinkable pseudonyms
        # cache keys are keyed hashes (every worker and replica must agree, so not a per-worker secret): no query
        # text or user id is ever a key in Redis or cache.sqlite; without the pipeline's key, the bundle's version
        self._cache_secret = self.key or self.engine.version.encode("utf-8")
        self.feedback_log = FeedbackLog(feedback_dir)
        self.live = make_live(stored, self.redis, self.key, redis_url, cache_params.redis_retry_seconds)
        self.catalog = None  # the catalog stream's keys, followed by a thread (POST /items)
        if self.live is not None:
            self.catalog = CatalogKeys(self.live.params.prefix)
            popularity = self.engine.base_view.components.get("popularity")
            since = datetime.fromisoformat(manifest["created"]).timestamp()
            live_scores = (lambda: self.live.popularity_since(popularity.params.event_weights, since)) \
                if popularity is not None and self.live.params.popularity_refresh_seconds else None
            self.catalog_follower = CatalogFollower(self.live.intake_client, self.catalog, self.engine,
                                                    self.live.params.catalog_poll_ms / 1000, live_scores,
                                                    self.live.params.popularity_refresh_seconds).start()
        feedback = FeedbackParams.model_validate(stored["feedback"])
        # a task without a fitted fusion (the fuse stage skipped it: no requests) is answered by a fallback
        self.unmodelled = [task for task in TASKS if task not in self.engine.fusions]
        for task in self.unmodelled:
            skipped = (manifest.get("metrics") or {}).get(task)
            log.warning("no model for a task: fallback answers", extra={
                "task": task, "fallback": NO_MODEL[task],
                "reason": skipped.get("skipped") if isinstance(skipped, dict) else None})
        dimensions = {task: len(feature_names(self.engine.task_components[task])) for task in self.engine.fusions}
        self.bandit = None
        if self.params.bandit.enabled:
            self.bandit = OnlineBandit(Path(state_dir) / f"bandit-worker{worker}.json", Path(feedback_dir),
                                       self.params.bandit, feedback, dimensions)
            self.poller = Poller(self.bandit, self.params.bandit.poll_seconds).start()
        self.recent: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # request id -> served item ids
        self.counters = {"cache_hits": 0, "cache_misses": 0, "fallbacks": 0, "served_log_failures": 0,
                         "live_unavailable": 0}
        self.on_served_log_failure = None  # optional (error name) -> None for each served list not logged (a metric)
        if "search" in self.engine.fusions:  # first request pays no lazy setup (a misspelled word: the spelling
            self.engine.rank("search", self.engine.search_request(WARM_UP_QUERY, None))  # correctors' indexes too

    # ---------------------------------------------------------------- helpers
    def user_pseudonym(self, user_id: str | None) -> str | None:
        """For lookups: the pipeline's pseudonym of this user (None when it cannot be known)."""
        return pseudonymous_user(user_id, self.key)

    def log_user(self, user_id: str | None) -> str | None:
        """For logs and files: a keyed pseudonym, never the raw id."""
        if not user_id:
            return None
        return pseudonymous_user(user_id, self._log_key) or "u_" + hashlib.sha256(user_id.encode()).hexdigest()[:20]

    def cache_key(self, task: str, *parts: str) -> str:
        """The model version (a new bundle never reads an old entry), then a keyed hash of what the list depends on."""
        digest = hmac.new(self._cache_secret, "\x1f".join((task, *parts)).encode("utf-8"), hashlib.sha256)
        return f"{self.engine.version}.{self.engine.view_key}|{task}|{digest.hexdigest()[:40]}"

    def _lookup(self, key: str) -> Ranked | None:
        ranked = self.cache.get(key)
        self.counters["cache_hits" if ranked is not None else "cache_misses"] += 1
        return ranked

    def _cached(self, key: str, compute) -> tuple[Ranked, bool]:
        """The list and whether it came from the cache."""
        ranked = self._lookup(key)
        if ranked is not None:
            return ranked, True
        ranked = compute()
        self.cache.set(key, ranked)
        return ranked, False

    def _answer(self, task: str, ranked: Ranked, k: int, request, user_log: str | None, cached: bool = False,
                fresh: list[tuple[str, str]] | None = None) -> dict:
        request_id = uuid.uuid4().hex
        served = self.bandit.order(task, ranked.scores, ranked.component_scores, ranked.bandit_context) \
            if self.bandit and not ranked.fallback else None
        if served is not None:
            ranked.bandit_context = served.context
        order = served.order if served is not None else np.arange(len(ranked.positions))
        propensities = served.propensities if served is not None else np.ones(len(order))
        chosen = order[:k].tolist()
        self._explain(task, ranked, chosen)
        shareable = not request.history  # the reasons of a user with history are that user's own
        fresh_positions = {int(self.engine.items.position[item]): kind for item, kind in fresh or ()
                           if item in self.engine.items.position}
        undescribed = [index for index in chosen if not (shareable and index in ranked.described)]
        grades = dict(zip(undescribed, self.engine.relevance(task, ranked, undescribed)))  # one model call
        items = []
        for slot, (index, propensity) in enumerate(zip(chosen, np.round(propensities[:k], 6).tolist())):
            described = ranked.described.get(index) if shareable else None
            if described is None:
                position = int(ranked.positions[index])
                described = {**self.engine.item_entry(position), "score": round(float(ranked.scores[index]), 6),
                             "relevance": grades[index],
                             "explanation": self.engine.explanation(position, ranked.explained[index],
                                                                    ranked.base, request, fresh_positions)}
                if shareable:
                    ranked.described[index] = described
            items.append({"rank": slot + 1, **described, "propensity": propensity})
        policy = served.policy if served is not None else ("popularity" if ranked.fallback else "fused")
        slate_features = served.slate_features[:k] if served is not None else []
        try:
            self.feedback_log.log_served({"request_id": request_id, "task": task, "user": user_log,
                                          "items": [item["item_id"] for item in items],
                                          "propensities": [item["propensity"] for item in items],
                                          "slate_features": slate_features, "policy": policy,
                                          "model_version": self.engine.version})
        except OSError as exc:  # a full disk costs the log row (counted), never the answer already ranked
            self._served_log_failed(exc)
        self._remember(request_id, [item["item_id"] for item in items])
        if ranked.fallback:
            self.counters["fallbacks"] += 1
        return {"request_id": request_id, "model_version": self.engine.version, "policy": policy,
                "fallback": ranked.fallback, "cached": cached, "notes": ranked.notes, "items": items}

    def _explain(self, task: str, ranked: Ranked, rows: list[int]) -> None:
        """Contributions of the served candidates that the (cached) list has not explained yet."""
        missing = [row for row in rows if row not in ranked.explained]
        if missing:
            parts, ranked.base = self.engine.contributions(task, ranked, missing)
            ranked.explained.update(zip(missing, parts))

    def _remember(self, request_id: str, item_ids: list[str]) -> None:
        # a tuple of strings: the garbage collector stops tracking it (100k of them would slow full collections)
        self.recent[request_id] = tuple(item_ids)
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)

    # ---------------------------------------------------------------- the API
    def search(self, query: str, k: int = 10, user_id: str | None = None, filters: dict | None = None) -> dict:
        call = self.begin_search(query, k, user_id, filters)
        if call.ranked is None:
            self.rank_searches([call])
        return self.finish_search(call)

    def begin_search(self, query: str, k: int = 10, user_id: str | None = None,
                     filters: dict | None = None) -> SearchCall:
        """A /search request up to its fused list: taken from the cache when there (then call.ranked is set),
        else left for rank_searches (with serving.batching.on_loop the service ranks the misses that reach a
        worker's event loop together)."""
        user = self.user_pseudonym(user_id)
        chosen_filters = Filters(**(filters or {}))
        # the fused search list reads the query alone (its cache key); the user's history, fresh events included,
        # gives the reasons of the explanations
        fresh, notes = self._fresh_events(user)
        request = self.engine.search_request(" ".join(query.split()), user, [item for item, _ in fresh])
        call = SearchCall(time.perf_counter(), user_id, k, request, chosen_filters,
                          self.cache_key("search", request.query.casefold(), repr(chosen_filters.key())))
        if "search" in self.unmodelled:  # popular items would ignore the query: an empty, explained answer
            call.ranked = Ranked.empty(fallback=NO_MODEL["search"], notes=[NO_MODEL_NOTES["search"]])
            return call
        call.ranked = self._lookup(call.key)
        call.cached = call.ranked is not None
        call.fresh, call.notes = fresh, notes
        return call

    def rank_searches(self, calls: list[SearchCall]) -> None:
        self._rank_calls("search", calls, [call.filters for call in calls])

    def finish_search(self, call: SearchCall) -> dict:
        return self._finish("search", call, call.notes)

    def _rank_calls(self, task: str, calls: list, filters: list[Filters] | None = None) -> None:
        """The fused lists of a task's cache misses, ranked together (each component's retrieval and scoring once
        for all, one stack predict), each cached."""
        for call, ranked in zip(calls, self.engine.rank_many(task, [call.request for call in calls], filters)):
            call.ranked = ranked
            self.cache.set(call.key, ranked)

    def _finish(self, task: str, call, notes: list[str]) -> dict:
        """The answer to a SearchCall or RecommendCall whose list is ranked, with `notes` added, logged."""
        user_log = self.log_user(call.user_id)
        answer = self._answer(task, call.ranked, call.k, call.request, user_log, call.cached, call.fresh)
        answer["notes"] = [*answer["notes"], *notes]
        log.info(task, extra={"request_id": answer["request_id"], "user": user_log, "k": call.k,
                              "returned": len(answer["items"]), "fallback": answer["fallback"],
                              "ms": round(1000 * (time.perf_counter() - call.started), 2)})
        return answer

    def recommend(self, user_id: str, k: int = 10, context_item_ids: list[str] | None = None) -> dict:
        call = self.begin_recommend(user_id, k, context_item_ids)
        if call.ranked is None:
            self.rank_recommends([call])
        return self.finish_recommend(call)

    def begin_recommend(self, user_id: str, k: int = 10,
                        context_item_ids: list[str] | None = None) -> RecommendCall:
        """A /recommend request up to its fused list: a cold start, or the cached list, set in call.ranked; else
        left for rank_recommends (with serving.batching.on_loop the service ranks the misses that reach a worker's
        event loop together, as it does searches)."""
        started = time.perf_counter()
        user = self.user_pseudonym(user_id)
        fresh_events, live_notes = self._fresh_events(user)
        fresh = [item for item, _ in fresh_events]
        request, ignored = self.engine.recommend_request(user, [*fresh, *(context_item_ids or [])])
        # a live item the bundle has not seen yet is no error
        call = RecommendCall(started, user_id, k, request, fresh_events, live_notes,
                             [item for item in ignored if item not in fresh])
        if "recommend" in self.unmodelled:  # popular items, without what the user already has
            call.ranked = self.engine.cold_start(self.params.max_k, exclude=request.history)
            call.ranked.fallback, call.ranked.notes = NO_MODEL["recommend"], [NO_MODEL_NOTES["recommend"]]
        elif not request.history:
            call.ranked = self.engine.cold_start(self.params.max_k)
        else:
            call.key = self.cache_key("recommend", user or "", ",".join(map(str, request.history[-50:])))
            call.ranked = self._lookup(call.key)
            call.cached = call.ranked is not None
        return call

    def rank_recommends(self, calls: list[RecommendCall]) -> None:
        self._rank_calls("recommend", calls)

    def finish_recommend(self, call: RecommendCall) -> dict:
        unknown = [f"unknown context item ids ignored: {', '.join(call.ignored[:10])}"] if call.ignored else []
        return self._finish("recommend", call, [*call.notes, *unknown])

    def _fresh_events(self, user: str | None) -> tuple[list[tuple[str, str]], list[str]]:
        """The user's events from the live state ((item id, event type), oldest first), and the notes to add."""
        if self.live is None or not user:
            return [], []
        fresh = self.live.recent_events(user)
        if fresh is None:
            self.counters["live_unavailable"] += 1
            return [], [LIVE_UNAVAILABLE]
        return fresh, []

    def events(self, rows: list) -> dict:
        """POST /events: a batch checked against the raw contract and published to the stream; StreamUnavailable
        without a stream; {"accepted": 0, "errors": [...]} when a row is bad (nothing of the batch published)."""
        if self.live is None:
            raise StreamUnavailable("no event stream: the service runs without SHOPFUSION_REDIS_URL")
        if len(rows) > self.live.params.max_batch:
            return {"accepted": 0, "errors": [{"row": None, "field": None,
                                               "msg": f"at most {self.live.params.max_batch} events a call"}]}
        intake = self.live.intake([row.model_dump() if hasattr(row, "model_dump") else row for row in rows])
        return {"accepted": intake.accepted, "errors": intake.errors}

    def items(self, rows: list) -> dict:
        """POST /items: new or changed products into the catalog stream, which every worker follows; StreamUnavailable
        without Redis; {"accepted": 0, "errors": [...]} when a row is bad (nothing of the batch applied)."""
        if self.catalog is None:
            raise StreamUnavailable("no catalog stream: the service runs without SHOPFUSION_REDIS_URL")
        updates = [row.model_dump(exclude_unset=True) if hasattr(row, "model_dump") else row for row in rows]
        known = self.engine.base_view.items.position

        def apply() -> dict:
            unknown = [row["item_id"] for row in updates if row["item_id"] not in known]
            errors = check_items(updates, known, stored_item_ids(self.live.intake_client, self.catalog, unknown))
            if errors:
                return {"accepted": 0, "errors": errors, "catalog_version": None}
            version = publish_items(self.live.intake_client, self.catalog, updates, known, self.live.params.maxlen)
            return {"accepted": len(updates), "errors": [], "catalog_version": version}

        answer = self.live.intake_circuit.call(apply, None)
        if answer is None:
            raise StreamUnavailable("the catalog stream is unreachable; retry later")
        return answer

    def similar(self, item_id: str, k: int = 10) -> dict:
        return {"model_version": self.engine.version, "item_id": item_id, **self.engine.similar(item_id, k)}

    def _served_log_failed(self, exc: OSError) -> None:
        self.counters["served_log_failures"] += 1
        if self.counters["served_log_failures"] % SERVED_LOG_WARN_EVERY == 1:  # the first of a burst, then 1 in N
            log.warning("served list not logged", extra={"error": f"{type(exc).__name__}: {exc.strerror or exc}",
                                                         "failures": self.counters["served_log_failures"]})
        if self.on_served_log_failure is not None:
            self.on_served_log_failure(errno.errorcode.get(exc.errno, type(exc).__name__))

    def feedback(self, request_id: str, user_id: str, item_id: str, event_type: str) -> dict:
        """Raises FeedbackNotRecorded when the event could not be made durable (the service answers 503)."""
        served = self.recent.get(request_id)
        try:
            self.feedback_log.log_event({"request_id": request_id, "user": self.log_user(user_id), "item_id": item_id,
                                         "event_type": event_type,
                                         "slot": served.index(item_id) if served and item_id in served else None})
        except OSError as exc:
            log.warning("feedback not recorded", extra={"error": f"{type(exc).__name__}: {exc.strerror or exc}"})
            raise FeedbackNotRecorded(f"the feedback log cannot be written ({exc.strerror or exc}); retry later") from None
        if self.live is not None and (user := self.user_pseudonym(user_id)):
            # the same event id for a retried call: the stream processor applies it once
            if not self.live.publish_feedback(feedback_event(request_id, user, item_id, event_type)):
                self.counters["live_unavailable"] += 1
        return {"accepted": True, "request_id": request_id, "known_request": served is not None}

    def close(self) -> None:
        if self.catalog is not None:
            self.catalog_follower.stop()
        if self.bandit is not None:
            self.poller.stop()
        self.cache.close()
        if self.redis is not None:
            self.redis.close()
        if self.live is not None and self.live.intake_redis is not self.redis:
            self.live.intake_redis.close()
        self.feedback_log.close()


def make_live(stored: dict, redis: SharedRedis | None, key: bytes | None, url: str | None = None,
              retry_seconds: float = 2.0) -> Live | None:
    """The stream intake and live state when the service has Redis and the bundle its stream params (a bundle
    packed before the stream existed has none: it is served from the bundle alone)."""
    if redis is None or "stream" not in stored:
        return None
    params = StreamParams.model_validate(stored["stream"])
    intake = connect_redis(url, params.intake_timeout_ms / 1000, retry_seconds, name="redis intake",
                           check_at_start=False) if url else None
    return Live(redis, params, stored["session_gap_seconds"], key, intake)


def feedback_event(request_id: str, user: str, item_id: str, event_type: str) -> dict:
    """A /feedback call as a canonical event of the stream (pseudonymized user; its id fixed by the call)."""
    return {"event_id": f"fb-{request_id}-{item_id}-{event_type}"[:128], "user_id": user, "item_id": item_id,
            "event_type": event_type, "timestamp": datetime.now(timezone.utc).isoformat(), "session_id": None}
