"""The rate limit, the concurrency cap and the bounded metric paths, on a bare ASGI app (the HTTP tests run them
in a real server)."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.serving.limits import LimitMiddleware, TokenBuckets
from pipelines.serving.security import REAL_PATH, UNKNOWN_PATH, metric_path, real_path


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_holds_burst_tokens_and_refills_at_its_rate():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3.0, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: one token comes in 1 / rate seconds
    assert buckets.take("b") == 0.0  # every key has its own
    clock.now += 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") == pytest.approx(0.5)
    clock.now += 60
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, never beyond


async def _call(middleware, path="/search", key="k1"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": [(b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 5000)}
    await middleware(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    return start["status"], dict(start["headers"])


def make_app(gate: asyncio.Event | None = None):
    async def app(scope, receive, send):
        if gate is not None:
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


def test_over_the_rate_a_key_gets_429_with_retry_after_and_others_do_not():
    refused = []
    middleware = LimitMiddleware(make_app(), ["/search"], rate_per_second=0.5, burst=2, max_concurrent=10,
                                 on_limited=refused.append)

    async def scenario():
        first = [await _call(middleware) for _ in range(3)]
        return first, await _call(middleware, key="k2"), await _call(middleware, path="/healthz")

    first, other_key, probe = asyncio.run(scenario())
    assert [status for status, _ in first] == [200, 200, 429]
    assert first[2][1][b"retry-after"] == b"2"  # one token every 2 s
    assert other_key[0] == 200 and probe[0] == 200 and refused == ["rate"]


def test_beyond_the_concurrency_cap_a_request_is_turned_away_at_once():
    refused = []

    async def scenario():
        gate = asyncio.Event()
        middleware = LimitMiddleware(make_app(gate), ["/search"], rate_per_second=100, burst=100, max_concurrent=2,
                                     on_limited=refused.append)
        held = [asyncio.create_task(_call(middleware, key=f"k{i}")) for i in range(2)]
        await asyncio.sleep(0.01)
        turned_away = await asyncio.wait_for(_call(middleware, key="k9"), timeout=1)
        gate.set()
        return turned_away, [await task for task in held], await _call(middleware, key="k9")

    turned_away, held, after = asyncio.run(scenario())
    assert turned_away[0] == 429 and turned_away[1][b"retry-after"] == b"1"
    assert [status for status, _ in held] == [200, 200] and after[0] == 200 and refused == ["concurrency"]


def test_metric_paths_are_bounded_and_the_real_path_comes_back():
    known = frozenset({"/search", "/metrics"})
    assert metric_path("/search", known) == "/search"
    assert metric_path("/wp-admin/user@example.com", known) == UNKNOWN_PATH
    assert metric_path("/static_content/x.js", known) == "/static_content"
    scope = {"type": "http", "path": UNKNOWN_PATH, "raw_path": b"/unknown", REAL_PATH: ("/x", b"/x")}
    assert real_path(scope) == {"type": "http", "path": "/x", "raw_path": b"/x"}
    assert real_path({"path": "/search"}) == {"path": "/search"}
