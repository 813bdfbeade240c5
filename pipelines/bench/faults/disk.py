"""4. Disk and folders. An unwritable feedback folder at start: the server refuses to start with one line naming
it. A disk that fills while serving (a small tmpfs mounted as the feedback folder, a real ENOSPC): /search and
/recommend still answer (each served row lost is counted in /metrics), /feedback answers 503, and no torn line
is left in either log. Mounting needs root; without it the full-disk part is reported as not run."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import httpx

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import Server, metric_value, search_then_click
from pipelines.feedback.log import EVENTS, SERVED

DISK_BYTES = 96 * 1024  # fills after a few hundred served rows
ROUNDS_AFTER_FULL = 30


def can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", "--version"], capture_output=True).returncode == 0


@contextmanager
def small_disk(folder: Path, size: int, read_only: bool = False):
    """A tmpfs of `size` bytes mounted at folder for the duration."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextmanager
def unwritable(folder: Path):
    """A folder this process cannot write: a read-only mount as root (root ignores modes), mode 0500 otherwise."""
    if can_mount():
        with small_disk(folder, 64 * 1024, read_only=True):
            yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o500)
    try:
        yield folder
    finally:
        folder.chmod(0o700)


def _refuses_unwritable_folder(context: FaultContext, fault: Fault) -> None:
    state = context.folder("disk_unwritable")
    with unwritable(state / "feedback") as folder:
        server = Server(context.bundle, state, workers=context.params.workers)
        try:
            exit_code = server.process.wait(timeout=120)
        finally:
            server.stop()
    lines = [line for line in server.output().splitlines() if "refusing to start" in line]
    fault.figures["unwritable_exit_code"] = exit_code
    fault.check("unwritable feedback folder: refuses to start", exit_code != 0)
    fault.check("unwritable feedback folder: one line naming it", len(lines) >= 1 and all(str(folder) in line for line in lines)
                and len({line.split("refusing to start", 1)[1] for line in lines}) == 1)
    fault.check("unwritable feedback folder: no traceback", "Traceback" not in server.output())


def _parses(path: Path) -> tuple[int, int]:
    """(lines, lines that are not JSON)."""
    lines = path.read_bytes().splitlines() if path.exists() else []
    torn = 0
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            torn += 1
    return len(lines), torn


def _serve_until_full(http: httpx.Client, server: Server, queries: list[str], fault: Fault) -> dict:
    statuses: dict[str, list[int]] = {"search": [], "recommend": [], "feedback": []}
    full_at, number = None, 0
    while number < 5000 and (full_at is None or number < full_at + ROUNDS_AFTER_FULL):
        codes, click = search_then_click(http, server.url, f"{queries[number % len(queries)]} {number}")
        statuses["search"].append(codes[0])
        if len(codes) > 1:
            statuses["feedback"].append(codes[1])
            fault.acknowledged = (fault.acknowledged or 0) + (click is not None)
            if codes[1] == 503 and full_at is None:
                full_at = number
        if full_at is not None:
            statuses["recommend"].append(http.post(server.url + "/recommend",
                                                   json={"user_id": "u-fault", "k": 5}).status_code)
        number += 1
    fault.figures["disk_full_after_rounds"] = full_at
    return statuses


def _full_disk(context: FaultContext, fault: Fault) -> None:
    state = context.folder("disk_full")
    with small_disk(state / "feedback", DISK_BYTES) as feedback:
        with Server(context.bundle, state, workers=context.params.workers) as server:
            with httpx.Client(timeout=30, headers=server.headers) as http:
                statuses = _serve_until_full(http, server, context.queries(), fault)
            failures = metric_value(server.metrics(), "shopfusion_served_log_failures")
            output = server.output()
        logs = {name: _parses(feedback / name) for name in (SERVED, EVENTS)}
        with open(feedback / EVENTS, "rb") as handle:
            fault.present = len(handle.read().splitlines())
    after_full = fault.figures["disk_full_after_rounds"]
    every = [status for codes in statuses.values() for status in codes]
    fault.requests += len(every)
    fault.errors += sum(status >= 500 and status != 503 for status in every)
    fault.figures.update(served_log_failures=failures, log_lines_and_torn=logs,
                         feedback_statuses_after_full=sorted(set(statuses["feedback"][after_full or 0:])))
    fault.check("disk full: reached", after_full is not None)
    fault.check("disk full: /search answers", statuses["search"][-ROUNDS_AFTER_FULL:].count(200) == ROUNDS_AFTER_FULL)
    fault.check("disk full: /recommend answers", statuses["recommend"] and set(statuses["recommend"]) == {200})
    fault.check("disk full: /feedback answers 503", statuses["feedback"][-1] == 503)
    fault.check("disk full: lost served rows counted in /metrics", failures > 0)
    fault.check("disk full: no torn line in either log", all(torn == 0 for _, torn in logs.values()))
    fault.check("disk full: every acknowledged event kept", fault.present == fault.acknowledged)
    fault.check("disk full: no traceback", "Traceback" not in output)


def run(context: FaultContext) -> Fault:
    fault = Fault(acknowledged=0)
    _refuses_unwritable_folder(context, fault)
    if can_mount():
        _full_disk(context, fault)
    else:
        fault.figures["disk_full"] = "not run: mounting a small tmpfs needs root"
    return fault
