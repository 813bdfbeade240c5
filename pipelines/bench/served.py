"""A real `bentoml serve` of a bundle, a private redis-server, and a small load of /search calls: what the fault
benchmark (`shopfusion bench faults`) and the HTTP tests (tests/code/test_service_http.py, tests/reliability/)
start and measure. Servers run in their own process group and are stopped with their workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("key-alpha", "key-beta")
START_SECONDS = 120


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, seconds: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


class Server:
    """`bentoml serve bentos.service:ShopFusion` over a bundle folder, its feedback and state under `state`."""

    def __init__(self, bundle: Path, state: Path, keys: tuple[str, ...] = KEYS, threads: int = 1,
                 workers: int = 1, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        env = {**os.environ, "SHOPFUSION_BUNDLE": str(bundle), "SHOPFUSION_API_KEYS": ",".join(keys),
               "SHOPFUSION_API_KEYS_FILE": str(self.state / "no-such-keys-file"),
               "SHOPFUSION_PORT": str(self.port), "SHOPFUSION_WORKERS": str(workers), "SHOPFUSION_THREADS": str(threads),
               "SHOPFUSION_FEEDBACK_DIR": str(self.state / "feedback"),
               "SHOPFUSION_STATE_DIR": str(self.state / "serving"),
               # each `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir as it starts: a home of its
               # own, or a server started beside it (another test, another scenario) resets its /metrics
               "BENTOML_HOME": str(self.state / "bentoml")}
        env.pop("SHOPFUSION_ALLOW_ANONYMOUS", None)
        env.update(extra_env or {})
        self.log = open(self.state / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bentos.service:ShopFusion"],
                                        cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.keys[0]}"}

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("server not ready in time: " + self.output()[-2000:])

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", headers=self.headers, timeout=10).text

    def workers(self) -> list:
        """The worker processes serving requests (BentoML's circus arbiter and watchers are not among them)."""
        import psutil

        def command(process) -> str:
            try:
                return " ".join(process.cmdline())
            except psutil.Error:  # exited (or a zombie not yet reaped) since it was listed: not serving
                return ""

        return [child for child in psutil.Process(self.process.pid).children(recursive=True)
                if "_bentoml_impl.worker" in command(child)]

    def stop(self, sig=signal.SIGTERM) -> None:
        """Signal the server; its workers are killed too (a SIGKILLed arbiter would leave them orphaned)."""
        import psutil

        workers = psutil.Process(self.process.pid).children(recursive=True) if self.process.poll() is None else []
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for worker in workers:
            try:
                worker.wait(timeout=10 if sig != signal.SIGKILL else 0.1)
            except psutil.TimeoutExpired:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
        if not self.log.closed:
            self.log.close()

    def __enter__(self) -> "Server":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer:
    """A redis-server of its own on a spare port (no persistence): paused with SIGSTOP, dropped with SIGKILL."""

    def __init__(self, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (the local Redis of these machines ships it)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self._listening, 5, 0.05):
            self.process.kill()
            raise RuntimeError(f"redis-server did not listen on port {self.port}")

    def _listening(self) -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", self.port)) == 0

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "RedisServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def p95(latencies_ms) -> float | None:
    return round(float(np.percentile(latencies_ms, 95)), 1) if len(latencies_ms) else None


class SearchLoad:
    """`clients` threads sending /search (each a keep-alive connection) until stopped; latencies of the answered
    calls in ms, the calls that failed (5xx or no answer), every status seen. Queries cycle through `queries`
    with a per-client offset: repeated queries meet the cache, as in a shop. A subclass sends another endpoint
    (`path`, `body`): RecommendLoad."""

    path = "/search"

    @staticmethod
    def body(query: str) -> dict:
        return {"query": query, "k": 10}

    def __init__(self, url: str, headers: dict, queries: list[str], clients: int = 8, timeout: float = 10.0):
        self.url, self.headers, self.queries, self.timeout = url, headers, queries, timeout
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.threads = [threading.Thread(target=self._client, args=(index,), daemon=True) for index in range(clients)]

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=self.timeout, headers=self.headers) as http:
            step = index
            while not self.stop_event.is_set():
                query = self.queries[step % len(self.queries)]
                step += len(self.threads)
                started = time.perf_counter()
                try:
                    status = http.post(self.url + self.path, json=self.body(query)).status_code
                except httpx.HTTPError:
                    status = 0
                elapsed = (time.perf_counter() - started) * 1000
                with self.lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == 200:
                        self.latencies_ms.append(elapsed)
                    elif status == 0 or status >= 500:
                        self.errors += 1

    def mark(self) -> int:
        """How many latencies are recorded so far (to slice one phase of the run out)."""
        with self.lock:
            return len(self.latencies_ms)

    def since(self, mark: int) -> list[float]:
        with self.lock:
            return self.latencies_ms[mark:]

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def __enter__(self) -> "SearchLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 5)


class RecommendLoad(SearchLoad):
    """SearchLoad's clients sending /recommend for the given user ids (raw ids: the service pseudonymizes them)."""

    path = "/recommend"

    @staticmethod
    def body(user_id: str) -> dict:
        return {"user_id": user_id, "k": 10}


def timed_searches(url: str, headers: dict, queries: list[str], seconds: float, clients: int = 8) -> SearchLoad:
    """A SearchLoad run for `seconds`, finished."""
    with SearchLoad(url, headers, queries, clients) as load:
        time.sleep(seconds)
    return load


def search_then_click(http: httpx.Client, url: str, query: str, user_id: str = "u-fault") -> tuple[list[int], tuple | None]:
    """One shopper's step: /search, then a click on the first item through /feedback. Returns the statuses
    seen and the (request_id, item_id) of the acknowledged click, None when there was none."""
    answer = http.post(url + "/search", json={"query": query, "k": 5, "user_id": user_id})
    if answer.status_code != 200 or not answer.json()["items"]:
        return [answer.status_code], None
    event = (answer.json()["request_id"], answer.json()["items"][0]["item_id"])
    reply = http.post(url + "/feedback", json={"request_id": event[0], "user_id": user_id, "item_id": event[1],
                                               "event_type": "click"})
    return [answer.status_code, reply.status_code], event if reply.status_code == 200 else None


def metric_value(metrics_text: str, name: str, **labels) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels` (0 when there is none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in (name, name + "_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def bundle_with_serving(bundle: Path, folder: Path, **changes) -> Path:
    """The bundle's files linked into folder, with a manifest whose serving params (serving.<name>) are replaced
    by `changes`: a server with other limits or timeouts over the same models (the manifest's own digest is not
    in it: the service verifies the other files, which are the same)."""
    import json

    folder.mkdir(parents=True)
    for entry in Path(bundle).iterdir():
        if entry.name != "manifest.json":
            (folder / entry.name).symlink_to(entry.resolve())
    manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    manifest["serving"]["serving"].update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder
