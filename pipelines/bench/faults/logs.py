"""1. Damaged feedback logs: while a 2-worker server takes searches and clicks, a torn line and a line of garbage
are written into served.jsonl and events.jsonl, then served.jsonl is truncated under the readers' offsets.
Each damaged line must be skipped, logged with its byte offset and counted in /metrics; the bandit must read on
to the end of both files (learning goes on); monitoring must read every whole row; every acknowledged click
must be read back."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import Server, metric_value, search_then_click, wait_until
from pipelines.feedback.log import EVENTS, SERVED, read_rows, served_lists

ROUNDS = 30  # search-and-click rounds per phase
TORN = b'{"request_id": "torn-by-a-crash", "items": ["'  # a row cut short, as a crash mid-write leaves it
GARBAGE = b"\x00\xff\xfe not json at all \x01\n"


def _traffic(http: httpx.Client, server: Server, queries: list[str], fault: Fault, phase: int) -> list[tuple]:
    clicks = []
    for number in range(ROUNDS):
        statuses, click = search_then_click(http, server.url, queries[(phase * ROUNDS + number) % len(queries)])
        fault.requests += len(statuses)
        fault.errors += sum(status >= 500 for status in statuses)
        clicks += [click] if click else []
    return clicks


def _damage(path) -> list[int]:
    """A torn line (then a newline, as the next writer's row would follow it) and a garbage line appended;
    their byte offsets."""
    with open(path, "ab") as handle:
        torn_at = handle.tell()
        handle.write(TORN + b"\n")
        garbage_at = handle.tell()
        handle.write(GARBAGE)
    return [torn_at, garbage_at]


def _saved_offsets(state_dir) -> list[dict]:
    return [json.loads(path.read_text())["offsets"] for path in sorted(state_dir.glob("bandit-worker*.json"))]


def run(context: FaultContext) -> Fault:
    state = context.folder("logs")
    feedback = state / "feedback"
    fault, queries = Fault(), context.queries()
    manifest = json.loads((context.bundle / "manifest.json").read_text(encoding="utf-8"))
    poll_seconds = manifest["serving"]["serving"]["bandit"]["poll_seconds"]  # how often each worker reads the logs
    server = Server(context.bundle, state, workers=max(2, context.params.workers)).wait_ready()
    try:
        with httpx.Client(timeout=30, headers=server.headers) as http:
            clicks = _traffic(http, server, queries, fault, 0)
            damaged = {name: _damage(feedback / name) for name in (SERVED, EVENTS)}
            clicks += _traffic(http, server, queries, fault, 1)
            counted = wait_until(lambda: all(
                metric_value(server.metrics(), "shopfusion_log_lines_skipped", file=name) >= 2
                for name in (SERVED, EVENTS)), 15, 0.5)
            before_truncation = os.path.getsize(feedback / SERVED)
            # cut to before the damaged lines, which every reader has passed (they were counted): each reader's
            # offset now points past the end; a quiet pause lets every worker's poller meet that
            os.truncate(feedback / SERVED, damaged[SERVED][0] // 2)
            time.sleep(3 * poll_seconds)
            clicks += _traffic(http, server, queries, fault, 2)
            time.sleep(3 * poll_seconds)  # the readers catch up with the last phase
    finally:
        server.stop(signal.SIGTERM)  # a clean stop saves each worker's bandit state and offsets
    output = server.output()
    events, _ = read_rows(feedback / EVENTS)
    read_back = {(row["request_id"], row["item_id"]) for row in events}
    monitored = served_lists(feedback)
    offsets = _saved_offsets(state / "serving")
    sizes = {name: os.path.getsize(feedback / name) for name in (SERVED, EVENTS)}

    fault.acknowledged, fault.present = len(clicks), sum(click in read_back for click in clicks)
    fault.figures.update(damaged_offsets=damaged, served_bytes_before_truncation=before_truncation,
                         saved_offsets=offsets, file_sizes=sizes, monitored_lists=len(monitored))
    fault.check("no 5xx", fault.errors == 0)
    fault.check("every acknowledged click read back", fault.present == fault.acknowledged > 0)
    fault.check("damaged lines counted in /metrics", counted)
    fault.check("damaged lines logged with their byte offsets", all(
        f'"byte_offset":{offset}' in output for offsets_of_file in damaged.values() for offset in offsets_of_file))
    fault.check("truncation detected and logged", "offset past the end" in output)
    fault.check("every worker's bandit read to the end of both files (learning goes on)",
                len(offsets) >= 2 and all(saved == sizes for saved in offsets))
    fault.check("monitoring reads the whole rows", len(monitored) > 0)
    fault.check("no traceback", "Traceback" not in output)
    return fault
