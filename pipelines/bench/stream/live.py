"""The stream's moving parts as the bench runs them: real `shopfusion stream run` processes, the state they leave in
Redis read back through LiveState's own keys, and the Parquet sink's files counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pandas as pd

from pipelines.bench.served import free_port, wait_until
from pipelines.bench.workspace import shopfusion_command
from pipelines.core import contract
from pipelines.feedback.live_state import LiveState
from pipelines.feedback.stream import StreamNames

CHUNK = 5000  # Redis commands a pipeline round trip when the bench reads the state back


class Processors:
    """`count` processors, `shopfusion stream run --consumer <name>-<i>` with the workspace's params.yaml against
    `redis_url` (and `--sink` when given). A killed one is restarted under the same name: it resumes its own
    pending entries first, as a real deployment's restarted processor does."""

    def __init__(self, count: int, name: str, redis_url: str, params_path: Path, folder: Path,
                 sink: Path | None = None):
        self.names = [f"{name}-{index}" for index in range(count)]
        self.redis_url, self.params_path, self.sink = redis_url, Path(params_path), sink
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.lives = [0] * count  # how often each was started
        self.kills = 0

    def _spawn(self, index: int) -> None:
        self.lives[index] += 1
        name = self.names[index]
        # each life its own metrics port: processors beside each other on one host cannot share one
        command = shopfusion_command("shopfusion stream run") + [
            "--consumer", name, "--redis-url", self.redis_url, "--params", str(self.params_path),
            "--metrics-port", str(free_port())]
        if self.sink is not None:
            command += ["--sink", str(self.sink)]
        with open(self.folder / f"{name}.{self.lives[index]}.out", "wb") as out, \
                open(self.folder / f"{name}.err", "ab") as err:
            # the workspace is the cwd: its relative paths (the key file) are the stages'
            self.processes[index] = subprocess.Popen(command, cwd=self.params_path.parent, stdout=out, stderr=err,
                                                     env={**os.environ, "SHOPFUSION_LOG_LEVEL": "WARNING"})

    def start(self) -> "Processors":
        for index in range(len(self.names)):
            self._spawn(index)
        return self

    def wait_joined(self, client, names: StreamNames, seconds: float = 120) -> None:
        """Until every processor has read from the group once (it is importing and connecting before that)."""
        def joined() -> bool:
            self.check_alive()
            try:
                consumers = {_text(entry["name"]) for entry in client.xinfo_consumers(names.stream, names.group)}
            except Exception:  # noqa: BLE001 - no stream or no group yet: the first processor makes them
                return False
            return set(self.names) <= consumers
        if not wait_until(joined, seconds, 0.05):
            raise RuntimeError(f"stream processors did not join the group in {seconds} s: {self.errors()[-2000:]}")

    def check_alive(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() not in (None, -signal.SIGKILL):
                raise RuntimeError(f"a stream processor exited with {process.returncode}: {self.errors()[-2000:]}")

    def kill(self, index: int) -> None:
        """SIGKILL one processor and start it again under the same consumer name."""
        process = self.processes[index]
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.kills += 1
        self._spawn(index)

    def stop(self) -> list[dict]:
        """SIGTERM each (a processor drains its sink then) and wait; the counts each last life printed."""
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        counts = []
        for index, process in enumerate(self.processes):
            if process is None:
                continue
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            out = (self.folder / f"{self.names[index]}.{self.lives[index]}.out").read_text(encoding="utf-8")
            try:
                counts.append(json.loads(out))
            except ValueError:
                counts.append({"exit": process.returncode})
        return counts

    def errors(self) -> str:
        return "\n".join((self.folder / f"{name}.err").read_text(encoding="utf-8", errors="replace")
                         for name in self.names if (self.folder / f"{name}.err").exists())

    def __enter__(self) -> "Processors":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes and their descendants have used so far; gone ones count 0."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        for member in family:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


def own_cpu_seconds() -> float:
    """CPU time of this process, every thread (the bench's load clients, probes and poller)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended and been waited for."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def drained(client, names: StreamNames) -> bool:
    """Every entry of the stream delivered to the group and acknowledged."""
    try:
        groups = client.xinfo_groups(names.stream)
        last = _text(client.xinfo_stream(names.stream)["last-generated-id"])
    except Exception:  # noqa: BLE001 - no stream yet
        return False
    group = next((entry for entry in groups if _text(entry["name"]) == names.group), None)
    return group is not None and int(group["pending"]) == 0 and _text(group["last-delivered-id"]) == last


def wait_drained(client, names: StreamNames, seconds: float) -> bool:
    """Until the group has nothing left to read or acknowledge (every entry applied or dead-lettered)."""
    return wait_until(lambda: drained(client, names), seconds, 0.05)


def _pipelined(client, calls) -> list:
    """Run (method name, *args) calls in pipelines of CHUNK commands; their answers in order."""
    calls, answers = list(calls), []
    for start in range(0, len(calls), CHUNK):
        pipe = client.pipeline(transaction=False)
        for method, *args in calls[start:start + CHUNK]:
            getattr(pipe, method)(*args)
        answers += pipe.execute()
    return answers


def snapshot(client, state: LiveState, event_ids: list[str], users: list[str], items: list[str]) -> dict:
    """The live state the events left, read back through LiveState's keys: the applied counter, the events whose
    applied marker is set, each item's counters in every window and event type, each user's history (members and
    scores) and the co-occurrence scores."""
    seen = [bool(answer) for answer in _pipelined(client, [("exists", state.seen_key(event)) for event in event_ids])]
    counters = {f"{window}:{kind}": dict(zip(items, state.item_counts(items, kind, window)))
                for window in state.window_seconds for kind in contract.EVENT_TYPES}
    histories = _pipelined(client, [("zrange", state.history_key(user), 0, -1, False, True) for user in users])
    co_keys = sorted(_text(key) for key in client.scan_iter(match=state.co_prefix() + "*", count=1000))
    co_lists = _pipelined(client, [("zrange", key, 0, -1, False, True) for key in co_keys])
    return {"applied": state.applied_count(),
            "seen": {event for event, marked in zip(event_ids, seen) if marked},
            "counters": counters,
            "histories": {user: [(_text(member), score) for member, score in history]
                          for user, history in zip(users, histories)},
            "co_occurrence": {key: {_text(member): score for member, score in pairs}
                              for key, pairs in zip(co_keys, co_lists)}}


def compare(clean: dict, killed: dict) -> dict:
    """The killed replay's state against the clean one's: events lost (applied in the clean replay, not in the
    killed one) and applied twice (the killed replay's applied counter and item counters beyond the clean one's),
    and whether every counter, history and co-occurrence is the same."""
    lost = len(clean["seen"] - killed["seen"])
    counter_excess = sum(max(0, count - clean["counters"][key].get(item, 0))
                         for key, counts in killed["counters"].items() for item, count in counts.items())
    counter_deficit = sum(max(0, count - killed["counters"][key].get(item, 0))
                          for key, counts in clean["counters"].items() for item, count in counts.items())
    windows = max(1, len(clean["counters"]) // len(contract.EVENT_TYPES))
    co_total = {name: sum(score for pairs in state["co_occurrence"].values() for score in pairs.values())
                for name, state in (("clean", clean), ("killed", killed))}
    return {
        "lost": lost,
        "applied_twice": max(0, killed["applied"] - (clean["applied"] - lost)),
        "unexpected": len(killed["seen"] - clean["seen"]),  # applied in the killed replay only
        "counter_excess": counter_excess // windows,  # events counted more often than in the clean replay
        "counter_deficit": counter_deficit // windows,
        "counters_equal": clean["counters"] == killed["counters"],
        "histories_equal": clean["histories"] == killed["histories"],
        "co_occurrence_equal": clean["co_occurrence"] == killed["co_occurrence"],
        "co_occurrence_total": co_total,
    }


def sink_counts(folder: Path, accepted: list[str]) -> dict:
    """The sink's Parquet parts (`<sink>/date=YYYY-MM-DD/hour=HH/part-*.parquet`) against the accepted events:
    rows, event ids written more than once (`duplicates`: rows beyond the first of each id) and accepted events
    written nowhere (`missing`)."""
    parts = sorted(Path(folder).glob("date=*/hour=*/part-*.parquet")) if Path(folder).is_dir() else []
    ids = pd.concat([pd.read_parquet(part, columns=["event_id"])["event_id"] for part in parts], ignore_index=True) \
        if parts else pd.Series([], dtype=object)
    return {"files": len(parts), "rows": int(len(ids)), "duplicates": int(len(ids) - ids.nunique()),
            "missing": len(set(accepted) - set(ids.astype(str)))}

