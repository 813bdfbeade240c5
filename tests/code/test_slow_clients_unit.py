"""The slow-client deadlines (pipelines/serving/slow_clients.py) on a real uvicorn protocol over a local socket
and on a bare ASGI app: no BentoML, well under a second each."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from pipelines.serving.slow_clients import BodyDeadline, cut_slow_headers, restore_protocols

HEADER_TIMEOUT_S = 0.3
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=[HttpToolsProtocol, H11Protocol], ids=["httptools", "h11"])
def protocol(request):
    """A subclass of one of uvicorn's protocols, patched: uvicorn's own classes stay as they are."""
    patched = type("Patched" + request.param.__name__, (request.param,), {})
    cuts = []
    cut_slow_headers(HEADER_TIMEOUT_S, on_cut=cuts.append, protocols=[patched])
    patched.cuts = cuts
    yield patched
    restore_protocols([patched])


async def serve(protocol_class):
    config = uvicorn.Config(hello, http=protocol_class, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: protocol_class(config, state, {}), "127.0.0.1", 0)


async def seconds_until_closed(reader, limit: float = 3.0) -> float | None:
    """How long until the server closes the connection (None: still open after `limit`)."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(1024), limit):
            pass
    except asyncio.TimeoutError:
        return None
    return time.monotonic() - started


def test_a_connection_trickling_its_headers_is_closed_after_the_timeout(protocol):
    async def scenario():
        server = await serve(protocol)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"GET / HTTP/1.1\r\nHost: te")  # and never the rest
        closed_after = await seconds_until_closed(reader)
        server.close()
        return closed_after

    closed_after = asyncio.run(scenario())
    assert closed_after is not None and HEADER_TIMEOUT_S * 0.8 <= closed_after < HEADER_TIMEOUT_S + 0.5
    assert protocol.cuts == ["headers"]


def test_complete_requests_on_a_keep_alive_connection_are_never_cut(protocol):
    async def scenario():
        server = await serve(protocol)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        answers = []
        for _ in range(3):  # each just under the deadline after the previous answer: each re-arms it
            writer.write(REQUEST)
            answers.append(await asyncio.wait_for(reader.readuntil(b"ok"), 2))
            await asyncio.sleep(HEADER_TIMEOUT_S * 0.7)
        writer.close()
        server.close()
        return answers

    assert all(answer.startswith(b"HTTP/1.1 200") for answer in asyncio.run(scenario()))
    assert protocol.cuts == []


def test_an_idle_connection_after_a_response_is_cut_too(protocol):
    async def scenario():
        server = await serve(protocol)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(REQUEST + b"GET / HT")  # one request, then a second that stalls in its request line
        await asyncio.wait_for(reader.readuntil(b"ok"), 2)
        closed_after = await seconds_until_closed(reader)
        server.close()
        return closed_after

    closed_after = asyncio.run(scenario())
    assert closed_after is not None and closed_after < HEADER_TIMEOUT_S + 0.5


# ---- body deadline ---------------------------------------------------------------------------------

async def echo_body(scope, receive, send):
    """Reads the whole body, then answers with it (as GuardMiddleware reads it before the API)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def run_app(app, chunks_and_gaps: list[tuple[bytes, float]]) -> list[dict]:
    """The messages app sends for a body arriving as (chunk, seconds before it) pairs."""
    sent = []

    async def scenario():
        queue = list(chunks_and_gaps)

        async def receive():
            chunk, gap = queue.pop(0)
            await asyncio.sleep(gap)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "path": "/search", "headers": []}, receive, send)

    asyncio.run(scenario())
    return sent


def test_a_body_in_time_passes_unchanged():
    cuts = []
    sent = run_app(BodyDeadline(echo_body, timeout_s=0.5, on_cut=cuts.append), [(b"ab", 0.0), (b"cd", 0.1)])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"abcd" and cuts == []


def test_a_trickling_body_gets_408_and_connection_close_at_the_deadline():
    cuts = []
    started = time.monotonic()
    sent = run_app(BodyDeadline(echo_body, timeout_s=0.3, on_cut=cuts.append),
                   [(b"a", 0.0), (b"b", 0.2), (b"c", 0.2), (b"d", 0.2)])
    elapsed = time.monotonic() - started
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert cuts == ["body"] and 0.3 <= elapsed < 0.45  # the deadline counts from the headers, not per chunk
