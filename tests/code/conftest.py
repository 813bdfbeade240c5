"""Fixtures of the stream tests (test_stream.py, test_stream_sink.py): a redis-server of each test module's own."""

from __future__ import annotations

import pytest
import redis

from pipelines.bench.served import RedisServer


@pytest.fixture(scope="module")
def server():
    """A redis-server per test module (no persistence); test_service_http.py's own `server` fixture overrides it."""
    with RedisServer() as running:
        yield running


@pytest.fixture
def client(server):
    """A client of the module's redis-server, emptied for each test."""
    connection = redis.Redis.from_url(server.url)
    connection.flushall()
    yield connection
    connection.close()
