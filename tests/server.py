"""A real `bentoml serve` of a bundle for the tests that talk HTTP (tests/code/test_service_http.py,
tests/reliability/): started in its own process group, stopped with its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
KEYS = ("key-alpha", "key-beta")
START_SECONDS = 120


class Server:
    def __init__(self, bundle: Path, state: Path, keys: tuple[str, ...] = KEYS, threads: int = 1,
                 workers: int = 1, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state
        env = {**os.environ, "SHOPFUSION_BUNDLE": str(bundle), "SHOPFUSION_API_KEYS": ",".join(keys),
               "SHOPFUSION_API_KEYS_FILE": str(state / "no-such-keys-file"),
               "SHOPFUSION_PORT": str(self.port), "SHOPFUSION_WORKERS": str(workers), "SHOPFUSION_THREADS": str(threads),
               "SHOPFUSION_FEEDBACK_DIR": str(state / "feedback"), "SHOPFUSION_STATE_DIR": str(state / "serving")}
        env.pop("SHOPFUSION_ALLOW_ANONYMOUS", None)
        env.update(extra_env or {})
        self.log = open(state / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bentos.service:ShopFusion"],
                                        cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

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

    def workers(self) -> list:
        """The worker processes serving requests (BentoML's circus arbiter and watchers are not among them)."""
        import psutil

        return [child for child in psutil.Process(self.process.pid).children(recursive=True)
                if "_bentoml_impl.worker" in " ".join(child.cmdline())]

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
