"""Adaptive micro-batching of query encodings across concurrent requests.

A request alone is encoded at once, in its own thread. While other requests are in flight, the first one waits up to
`max_wait_ms` for company and up to `max_batch` queries are encoded in one forward pass: under load
the transformer runs fewer, fuller batches; idle, nobody waits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np


class MicroBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int, max_wait_ms: float):
        self._encode, self.max_batch, self.max_wait = encode, max_batch, max_wait_ms / 1000.0
        self._queue: queue.Queue[tuple[list[str], Future]] = queue.Queue()
        self._in_flight = 0
        self._lock = threading.Lock()
        self.batches = 0
        self.encoded = 0
        self._thread = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._thread.start()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            alone = self._in_flight == 0
            self._in_flight += 1
        try:
            if alone:  # nobody to batch with: encoded in the caller's thread (a hand-off to the batching
                # thread costs a GIL switch, up to sys.getswitchinterval() while the event loop runs)
                vectors = self._encode(list(texts))
                with self._lock:
                    self.batches += 1
                    self.encoded += len(texts)
                return vectors
            future: Future = Future()
            self._queue.put((list(texts), future))
            return future.result()
        finally:
            with self._lock:
                self._in_flight -= 1

    def _collect(self) -> list[tuple[list[str], Future]]:
        jobs = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while sum(len(texts) for texts, _ in jobs) < self.max_batch:
            with self._lock:
                others_waiting = self._in_flight > len(jobs)
            if not others_waiting:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            texts = [text for job_texts, _ in jobs for text in job_texts]
            try:
                vectors = self._encode(texts)
            except Exception as exc:  # every waiting request gets the error, the thread lives on
                for _, future in jobs:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.encoded += len(texts)
            start = 0
            for job_texts, future in jobs:
                future.set_result(vectors[start:start + len(job_texts)])
                start += len(job_texts)
