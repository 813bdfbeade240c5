"""A circuit breaker for a shared server on the request path (Redis: the cache tier, the live state).

A call gets one try (the client is made with a short timeout and no retries). A failure opens the circuit:
every later call returns its default at once, with one warning line for the outage, while a background
thread probes the server every `retry_seconds` and closes the circuit when it answers. A server down at
start is the same: the worker starts without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from pipelines.core.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Circuit:
    def __init__(self, name: str, probe: Callable[[], object], retry_seconds: float):
        self.name, self.probe, self.retry_seconds = name, probe, retry_seconds
        self.skipped = 0  # calls answered by their default because the server failed or the circuit was open
        self._open = threading.Event()
        self._stop = threading.Event()
        self._trip_lock = threading.Lock()

    @property
    def available(self) -> bool:
        return not self._open.is_set()

    def call(self, function: Callable[[], T], default: T) -> T:
        """function() if the server answers, else default (and the circuit opens)."""
        if self._open.is_set():
            self.skipped += 1
            return default
        try:
            return function()
        except Exception as exc:  # slow or gone: the default, never a failed request
            self.skipped += 1
            self.trip(f"{self.name} failed: off, retrying in the background", exc)
            return default

    def check_at_start(self, message: str) -> None:
        try:
            self.probe()
        except Exception as exc:
            self.trip(message, exc)

    def trip(self, message: str, exc: Exception) -> None:
        with self._trip_lock:
            if self._open.is_set():
                return
            self._open.set()
        log.warning(message, extra={"error": type(exc).__name__, "retry_seconds": self.retry_seconds})
        threading.Thread(target=self._probe_until_back, name=f"{self.name}-probe", daemon=True).start()

    def _probe_until_back(self) -> None:
        while not self._stop.wait(self.retry_seconds):
            try:
                self.probe()
            except Exception:
                continue
            self._open.clear()
            log.info(f"{self.name} reachable again: back on")
            return

    def close(self) -> None:
        self._stop.set()
