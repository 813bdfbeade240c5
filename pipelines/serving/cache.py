"""Cache of fused candidate lists for hot requests: in-process LRU by default, Redis when configured.

What is cached is the expensive part (retrieval, scoring, fusion); the bandit ordering, explanations
and request ids are made per request, so a cached answer is still a fresh, logged decision. Keys carry
the model version, so a new bundle never reads an old entry.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict

import numpy as np

from pipelines.logs import get_logger
from pipelines.serving.engine import CacheParams, Ranked

log = get_logger(__name__)


def encode_ranked(ranked: Ranked) -> str:
    return json.dumps({
        "positions": ranked.positions.tolist(), "scores": ranked.scores.tolist(),
        "component_scores": {name: values.tolist() for name, values in ranked.component_scores.items()},
        "stack_features": None if ranked.stack_features is None else ranked.stack_features.tolist(),
        "contributions": ranked.contributions, "fallback": ranked.fallback, "notes": ranked.notes,
    })


def decode_ranked(text: str | bytes) -> Ranked:
    data = json.loads(text)
    features = data["stack_features"]
    return Ranked(np.asarray(data["positions"], dtype=np.int64), np.asarray(data["scores"], dtype=np.float64),
                  {name: np.asarray(values, dtype=np.float64) for name, values in data["component_scores"].items()},
                  stack_features=None if features is None else np.asarray(features, dtype=np.float32),
                  contributions=data["contributions"], fallback=data["fallback"], notes=data["notes"])


class LRUCache:
    def __init__(self, size: int, ttl_seconds: float, clock=time.monotonic):
        self.size, self.ttl, self.clock = size, ttl_seconds, clock
        self._entries: OrderedDict[str, tuple[float, Ranked]] = OrderedDict()
        self._lock = threading.Lock()
        self.backend = "lru"

    def get(self, key: str) -> Ranked | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored_at, value = entry
            if self.clock() - stored_at > self.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: Ranked) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[key] = (self.clock(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class RedisCache:
    """The same interface over a Redis server (shared by every worker and replica), entries expiring after ttl."""

    def __init__(self, url: str, ttl_seconds: float, prefix: str):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=1.0)
        self.client.ping()  # fail at start, not on the first request
        self.ttl, self.prefix = ttl_seconds, prefix
        self.backend = "redis"

    def get(self, key: str) -> Ranked | None:
        try:
            value = self.client.get(self.prefix + key)
        except Exception as exc:  # a slow or gone cache is a miss, never a failed request
            log.warning("redis get failed", extra={"error": type(exc).__name__})
            return None
        return None if value is None else decode_ranked(value)

    def set(self, key: str, value: Ranked) -> None:
        try:
            self.client.set(self.prefix + key, encode_ranked(value), ex=max(1, int(self.ttl)))
        except Exception as exc:
            log.warning("redis set failed", extra={"error": type(exc).__name__})


def make_cache(params: CacheParams, redis_url: str | None):
    if redis_url:
        return RedisCache(redis_url, params.ttl_seconds, params.redis_prefix)
    return LRUCache(params.size, params.ttl_seconds)
