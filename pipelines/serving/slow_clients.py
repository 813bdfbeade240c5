"""Deadlines for slow clients: request headers within `header_timeout_s`, the body within `body_timeout_s`.

uvicorn (as BentoML 1.4 runs it) has no deadline for a request still arriving. Its only timer is the
keep-alive one, armed after a response and cancelled by the first byte of the next request; a new
connection gets none. A client sending a header byte a second (a slowloris) keeps its connection, and a
file descriptor of the worker, for as long as it likes. A body is read by the app, and only BentoML's
traffic timeout (30 s, the whole request) ends a trickling one, with a 504 that blames the server.

- Headers: cut_slow_headers() patches uvicorn's HTTP protocol classes (installed once per process, like
  security.bound_metric_paths) to arm a timer when a connection opens and after each response; when it
  fires while no new request's headers have completed, the connection is closed (nothing is sent, as on
  the keep-alive timeout: the request never started).
- Bodies: BodyDeadline, a pure ASGI middleware outside the one that reads the body (GuardMiddleware),
  bounds every receive() by one deadline from the moment the headers completed; past it the request gets
  408 with `connection: close`.
"""

from __future__ import annotations

import asyncio
import json

HEADER_TIMER = "_slow_clients_timer"        # a protocol instance's armed timer
PATCHED = "_slow_clients_originals"         # a protocol class's own methods, before the patch
PATCHED_METHODS = ("connection_made", "on_response_complete", "connection_lost")


def http_protocols() -> list[type]:
    """uvicorn's HTTP/1.1 protocol classes installed here (httptools is what `http: auto` picks when present)."""
    classes = []
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        classes.append(HttpToolsProtocol)
    except ImportError:  # httptools is optional for uvicorn
        pass
    from uvicorn.protocols.http.h11_impl import H11Protocol
    return [*classes, H11Protocol]


def waiting_for_headers(protocol) -> bool:
    """True between a connection's opening (or a complete response) and the next request's headers: uvicorn
    makes a new request cycle when headers complete, so no cycle, or a finished one, means none is in."""
    return protocol.cycle is None or protocol.cycle.response_complete


def cut_if_still_waiting(protocol, cycle, on_cut) -> None:
    """The timer's end: close the connection unless a request's headers came in since it was armed (a new
    cycle), or it is gone or handed over (a WebSocket upgrade leaves `connections`)."""
    setattr(protocol, HEADER_TIMER, None)
    if protocol.cycle is not cycle or protocol.transport.is_closing() or protocol not in protocol.connections:
        return
    protocol.transport.close()
    if on_cut is not None:
        on_cut("headers")


def disarm(protocol) -> None:
    timer = getattr(protocol, HEADER_TIMER, None)
    if timer is not None:
        timer.cancel()
        setattr(protocol, HEADER_TIMER, None)


def arm(protocol, timeout_s: float, on_cut) -> None:
    """A fresh header deadline, if the connection now waits for a request (not while a pipelined one runs)."""
    disarm(protocol)
    if waiting_for_headers(protocol) and not protocol.transport.is_closing():
        timer = protocol.loop.call_later(timeout_s, cut_if_still_waiting, protocol, protocol.cycle, on_cut)
        setattr(protocol, HEADER_TIMER, timer)


def cut_slow_headers(timeout_s: float, on_cut=None, protocols: list[type] | None = None) -> None:
    """Patch the protocol classes (default: uvicorn's) so a connection whose request headers are not complete
    within timeout_s of its opening or of its last response is closed; on_cut("headers") is called for each
    (e.g. a metric). Calling it again only changes timeout_s and on_cut."""
    for protocol_class in protocols or http_protocols():
        originals = protocol_class.__dict__.get(PATCHED) or {name: getattr(protocol_class, name)
                                                             for name in PATCHED_METHODS}
        setattr(protocol_class, PATCHED, originals)
        for name, method in patched_methods(originals, timeout_s, on_cut).items():
            setattr(protocol_class, name, method)


def patched_methods(originals: dict, timeout_s: float, on_cut) -> dict:
    def connection_made(self, transport):
        originals["connection_made"](self, transport)
        arm(self, timeout_s, on_cut)

    def on_response_complete(self):
        originals["on_response_complete"](self)
        arm(self, timeout_s, on_cut)  # after the original: it may have started a pipelined request

    def connection_lost(self, exc):
        disarm(self)
        originals["connection_lost"](self, exc)

    return {"connection_made": connection_made, "on_response_complete": on_response_complete,
            "connection_lost": connection_lost}


def restore_protocols(protocols: list[type] | None = None) -> None:
    """Undo cut_slow_headers (tests)."""
    for protocol_class in protocols or http_protocols():
        originals = protocol_class.__dict__.get(PATCHED)
        if originals:
            for name, method in originals.items():
                setattr(protocol_class, name, method)
            delattr(protocol_class, PATCHED)


class BodyTimedOut(Exception):
    """Raised from receive() past the body deadline; BodyDeadline answers it."""


TIMED_OUT_BODY = json.dumps({"error": "request body not received in time"}).encode("utf-8")


class BodyDeadline:
    """Pure ASGI middleware: a request's body must be in within timeout_s of its headers, else 408 and the
    connection is closed; on_cut("body") is called for each. Must sit outside whatever reads the body."""

    def __init__(self, app, timeout_s: float, on_cut=None):
        self.app = app
        self.timeout_s = timeout_s
        self.on_cut = on_cut

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done, response_started = False, False

        async def receive_before_deadline():
            nonlocal body_done
            if body_done:  # after the body only a disconnect is left to wait for: no deadline on that
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # a timer handle, no task (wait_for makes one a call)
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_before_deadline, tracked_send)
        except BodyTimedOut:
            if response_started:  # an app that answers while still reading: nothing sane left to send
                raise
            await self.request_timeout(send)

    async def request_timeout(self, send) -> None:
        if self.on_cut is not None:
            self.on_cut("body")
        await send({"type": "http.response.start", "status": 408, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(TIMED_OUT_BODY)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": TIMED_OUT_BODY})
