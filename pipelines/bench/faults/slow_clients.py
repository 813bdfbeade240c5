"""8. Slow clients: `slow_headers` connections trickling their headers and `slow_bodies` trickling a POST /search
body, one byte a second, while normal clients search. Holds when /search's p95 stays within latency_factor of
its baseline, no search fails, and the server cuts every slow connection once its deadline
(serving.slow_clients, pipelines/serving/slow_clients.py) has passed, and not before: headers by closing the
connection, bodies with a 408.

A connection the server cuts is replaced at once (as a slowloris does), so the pressure lasts the whole
measured phase; after it, the last ones are waited for (their deadline plus slack). The server runs with the
documented deadlines when the load phase is long enough to see them pass (the benchmark's 30 s), else with
deadlines shortened to two thirds of the phase (the tests' 8 s), written into a copy of the bundle's manifest:
the deadlines are packed params, and that is how the service reads them.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import SearchLoad, Server, bundle_with_serving, metric_value, p95, timed_searches
from pipelines.serving.bundle import MANIFEST

TRICKLE_EVERY_S = 1.0            # one byte a second: a slowloris's pace
WARMUP_SECONDS = 2.0             # searches before the baseline: every query once through the cache
DEADLINE_SHARE_OF_PHASE = 2 / 3  # a shortened deadline leaves a third of the phase to see the cut
DECLARED_BODY_BYTES = 2048       # under max_body_bytes: the body is read, not refused at its Content-Length
EARLY_TOLERANCE_S = 0.5          # a cut this much before the deadline is still on it: the server accepts, and
                                 # starts its deadline, before this client's loop resumes from its connect


def slack_s(timeout_s: float) -> float:
    """How late after its deadline a cut still counts as on time: the server's event loop is busy with the
    load (a timer fires between requests) and the client sees the close a moment later."""
    return round(1.0 + 0.1 * timeout_s, 2)


@dataclass
class SlowConnection:
    kind: str                   # "headers" or "bodies"
    opened: float               # time.monotonic() when connected
    cut_after_s: float | None = None  # seconds from opening until the server closed it; None: never
    status: int | None = None   # the status of the server's answer, if it sent one before closing


class SlowAttack:
    """Slow connections to host:port driven by an event loop of their own in a thread: each slot keeps one
    connection trickling and opens a new one when the server cuts it, until stop()."""

    def __init__(self, host: str, port: int, key: str, headers: int, bodies: int):
        self.host, self.port, self.key = host, port, key
        self.slots = [("headers", index) for index in range(headers)] + [("bodies", index) for index in range(bodies)]
        self.connections: list[SlowConnection] = []
        self.connect_failures = 0
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None  # no new connections once set
        self.abandon: asyncio.Event | None = None   # the client closes what is still open once set
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    def start(self) -> "SlowAttack":
        self.thread.start()
        while self.abandon is None:
            time.sleep(0.01)
        return self

    def stop(self, wait_s: float) -> None:
        """No new connections; wait up to wait_s for the server to cut the open ones, then close the rest."""
        self.loop.call_soon_threadsafe(self.stopping.set)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(c.cut_after_s is None for c in self.connections):
            time.sleep(0.1)
        self.loop.call_soon_threadsafe(self.abandon.set)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

    def prefix(self, kind: str) -> bytes:
        """What a connection sends at once; then it trickles one byte a second of a header or body that
        never ends in time."""
        if kind == "headers":
            return b"POST /search HTTP/1.1\r\nHost: shopfusion\r\nX-Slow: "
        return (f"POST /search HTTP/1.1\r\nHost: shopfusion\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {DECLARED_BODY_BYTES}\r\n\r\n").encode()

    async def _main(self) -> None:
        self.stopping, self.abandon = asyncio.Event(), asyncio.Event()
        await asyncio.gather(*(self._slot(kind, index) for kind, index in self.slots))

    async def _slot(self, kind: str, index: int) -> None:
        await asyncio.sleep(random.Random(index).random() * TRICKLE_EVERY_S)  # spread the bytes over the second
        while not self.stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.connect_failures += 1
                await asyncio.sleep(TRICKLE_EVERY_S)
                continue
            # timed from the completed handshake: the server's deadline starts at its accept, which is not
            # earlier, so a cut is never seen early; a connect that waited for room in a full listen backlog
            # (SYN retried after 1 s, 3 s, ...) is not the server's deadline being late
            connection = SlowConnection(kind, time.monotonic())
            self.connections.append(connection)
            await self._trickle(connection, reader, writer)

    async def _trickle(self, connection: SlowConnection, reader, writer) -> None:
        """Trickle until the server closes the connection (recording when and with what) or abandon."""
        closed = asyncio.ensure_future(self._read_until_closed(connection, reader))
        abandoned = asyncio.ensure_future(self.abandon.wait())
        writer.write(self.prefix(connection.kind))
        byte = b"a" if connection.kind == "headers" else b" "  # JSON allows blanks anywhere between tokens
        while not closed.done() and not abandoned.done():
            await asyncio.wait([closed, abandoned], timeout=TRICKLE_EVERY_S)
            if not closed.done() and not abandoned.done():
                try:
                    writer.write(byte)
                except (ConnectionError, RuntimeError):  # closed under us: the reader records it
                    await closed
        abandoned.cancel()
        closed.cancel()
        writer.close()

    async def _read_until_closed(self, connection: SlowConnection, reader) -> None:
        answer = b""
        try:
            while chunk := await reader.read(4096):
                answer += chunk
        except ConnectionError:  # a reset is a cut too
            pass
        connection.cut_after_s = time.monotonic() - connection.opened
        if match := re.match(rb"HTTP/1\.[01] (\d{3})", answer):
            connection.status = int(match.group(1))


def documented_timeouts(bundle: Path) -> dict:
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    return dict(manifest["serving"]["serving"]["slow_clients"])


def shortened(documented: dict, load_seconds: float) -> dict:
    """The deadlines the server runs with: the documented ones, capped so each passes within the load phase."""
    cap = round(load_seconds * DEADLINE_SHARE_OF_PHASE, 2)
    return {name: min(seconds, cap) for name, seconds in documented.items()}


def raise_open_file_limit(needed: int) -> int:
    """This process (and the server it starts, which inherits it) may open `needed` more files: one socket a
    slow connection on each side. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def cut_figures(connections: list[SlowConnection], timeout_s: float) -> dict:
    """How many connections of one kind were opened and cut, and how long after opening."""
    cut = [c.cut_after_s for c in connections if c.cut_after_s is not None]
    statuses: dict[str, int] = {}
    for connection in connections:
        statuses[str(connection.status)] = statuses.get(str(connection.status), 0) + 1
    return {"timeout_s": timeout_s, "slack_s": slack_s(timeout_s), "opened": len(connections), "cut": len(cut),
            "cut_on_time": sum(timeout_s - EARLY_TOLERANCE_S <= s <= timeout_s + slack_s(timeout_s) for s in cut),
            "cut_after_s_min": round(min(cut), 2) if cut else None,
            "cut_after_s_max": round(max(cut), 2) if cut else None, "statuses": statuses}


def server_counted_cuts(server: Server) -> dict[str, float]:
    """shopfusion_slow_clients_cut by phase, as /metrics says (all workers)."""
    metrics = server.metrics()
    return {phase: metric_value(metrics, "shopfusion_slow_clients_cut", phase=phase) for phase in ("headers", "body")}


def run(context: FaultContext) -> Fault:
    params = context.params
    documented = documented_timeouts(context.bundle)
    timeouts = shortened(documented, params.load_seconds)
    folder = context.folder("slow_clients")
    bundle = bundle_with_serving(context.bundle, folder / "bundle", slow_clients=timeouts)
    raise_open_file_limit(params.slow_headers + params.slow_bodies)
    queries = context.queries()
    with Server(bundle, folder, workers=params.workers) as server:
        timed_searches(server.url, server.headers, queries, WARMUP_SECONDS, params.clients)
        baseline = timed_searches(server.url, server.headers, queries, params.load_seconds, params.clients)
        with SearchLoad(server.url, server.headers, queries, params.clients) as load:
            attack = SlowAttack("127.0.0.1", server.port, server.keys[0], params.slow_headers,
                                params.slow_bodies).start()
            started = load.mark()
            time.sleep(params.load_seconds)
            under_attack = load.since(started)  # the phase alone, not the wait for the last cuts after it
            attack.stop(max(timeouts.values()) + slack_s(max(timeouts.values())))
        counted = server_counted_cuts(server)
    return judged(params, documented, attack, baseline, load, under_attack, timeouts, counted)


def judged(params, documented: dict, attack: SlowAttack, baseline: SearchLoad, load: SearchLoad,
           under_attack: list[float], timeouts: dict, counted: dict) -> Fault:
    headers = cut_figures([c for c in attack.connections if c.kind == "headers"], timeouts["header_timeout_s"])
    bodies = cut_figures([c for c in attack.connections if c.kind == "bodies"], timeouts["body_timeout_s"])
    fault = Fault(requests=baseline.requests + load.requests, errors=baseline.errors + load.errors,
                  p95_ms=p95(under_attack), baseline_p95_ms=p95(baseline.latencies_ms))
    ratio = fault.p95_ms / fault.baseline_p95_ms if fault.p95_ms and fault.baseline_p95_ms else None
    fault.figures.update({
        "documented_timeouts_s": documented, "timeouts_s": timeouts, "p95_ratio": round(ratio, 2) if ratio else None,
        "searches_baseline": len(baseline.latencies_ms), "searches_under_attack": len(under_attack),
        "headers": headers, "bodies": bodies, "connect_failures": attack.connect_failures,
        "server_counted_cuts": counted})
    fault.check("attack_in_place", headers["opened"] >= params.slow_headers and bodies["opened"] >= params.slow_bodies
                and attack.connect_failures == 0)
    fault.check("p95_within_factor", ratio is not None and ratio <= params.latency_factor)
    fault.check("no_errors", fault.errors == 0)
    fault.check("headers_cut_on_time", headers["cut_on_time"] == headers["opened"])
    fault.check("bodies_cut_on_time", bodies["cut_on_time"] == bodies["opened"])
    fault.check("bodies_answered_408", bodies["statuses"] == {"408": bodies["opened"]})
    fault.check("server_counted_cuts", counted.get("headers", 0) >= headers["cut"]
                and counted.get("body", 0) >= bodies["cut"])  # shopfusion_slow_clients_cut: the operator's view
    return fault
