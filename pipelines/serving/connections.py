"""Keep-alive connections recycled after a number of requests, so every worker gets a share of the load.

`bentoml serve` starts its workers on one shared listening socket. A keep-alive connection stays with the
worker that accepted it, and when clients open their connections in a burst one worker often accepts them
all: the other worker then idles while requests queue (measured: one of two workers did 8.5 s of 8.9 s of
work at concurrency 8). Like nginx's `keepalive_requests`, a connection gets `connection: close` on its
N-th response; the client's next connection goes to whichever worker accepts first, which is the idle one.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_TRACKED_CONNECTIONS = 10_000  # connections this worker counts requests of (a closed one's count ages out)


class ConnectionRecycler:
    """Pure ASGI middleware: adds `connection: close` to every `max_requests`-th response of a connection."""

    def __init__(self, app, max_requests: int):
        if max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, got {max_requests}")
        self.app = app
        self.max_requests = max_requests
        self.served: OrderedDict[tuple, int] = OrderedDict()  # (client host, client port) -> requests answered

    def last_on_connection(self, client) -> bool:
        """Counts a request of this connection; True when its response should close the connection."""
        if not client:
            return False
        key = tuple(client)
        count = self.served.pop(key, 0) + 1
        if count >= self.max_requests:
            return True
        self.served[key] = count
        while len(self.served) > MAX_TRACKED_CONNECTIONS:
            self.served.popitem(last=False)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.last_on_connection(scope.get("client")):
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_closing)
