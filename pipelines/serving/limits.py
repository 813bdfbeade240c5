"""A per-key rate limit and a per-worker concurrency cap, as one pure ASGI middleware: 429 with Retry-After.

Each worker holds one token bucket per API key (by the key's id, never the key): `rate_per_second` tokens
refill it, it holds at most `burst`, and each API request takes one. A key's limit over the whole server
is therefore `workers x rate_per_second` (the workers share no state on the request path: a shared
counter in Redis would put a network call, and Redis's outages, in front of every request). An API
request that finds `max_concurrent` others in progress in its worker is turned away at once rather than
queued behind them: the client retries, perhaps on the other worker, instead of waiting out a backlog.
The middleware runs after authentication, so a refused key never uses a bucket; probes and /metrics
are never limited.

No library: `limits` and `pyrate-limiter` are not in this project's package index, and a token bucket
is the few lines below.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from pipelines.serving.security import bearer_token, json_response, key_id

MAX_BUCKETS = 10_000  # keys remembered per worker; the least recently used is forgotten (and starts full again)


class TokenBuckets:
    """One bucket per key: `rate` tokens a second, at most `burst`; `take` says how long until one is free."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be (nothing taken)."""
        now = self.clock()
        tokens, at = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        self.buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)
        if len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        return wait


def presented_key(headers: dict[bytes, bytes], client) -> str:
    """Whom a request counts against: its API key's id, else (an open API) its client address."""
    token = bearer_token(headers)
    return key_id(token) if token is not None else f"client:{client[0] if client else 'unknown'}"


class LimitMiddleware:
    def __init__(self, app, api_paths: list[str], rate_per_second: float, burst: float, max_concurrent: int,
                 on_limited=None):
        """on_limited(reason): called for each refused request ("rate" or "concurrency"), e.g. a metric."""
        self.app = app
        self.api_paths = set(api_paths)
        self.buckets = TokenBuckets(rate_per_second, burst)
        self.max_concurrent = max_concurrent
        self.in_progress = 0  # one event loop per worker: no lock needed
        self.on_limited = on_limited

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.api_paths:
            return await self.app(scope, receive, send)
        wait = self.buckets.take(presented_key(dict(scope.get("headers", [])), scope.get("client")))
        if wait > 0:
            return await self._refuse(send, "rate", f"rate limit: at most {self.buckets.rate:g} requests a second "
                                                    f"per key and worker", wait)
        if self.in_progress >= self.max_concurrent:
            return await self._refuse(send, "concurrency",
                                      f"busy: {self.max_concurrent} requests in progress in this worker", 1.0)
        self.in_progress += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1

    async def _refuse(self, send, reason: str, message: str, retry_after: float) -> None:
        if self.on_limited is not None:
            self.on_limited(reason)
        await json_response(send, 429, {"error": message}, [(b"retry-after", str(max(1, math.ceil(retry_after))).encode())])
