"""Adaptive batching across concurrent requests, for the two ways a worker answers them.

LoopBatcher (`serving.batching.on_loop`, the default with one thread per worker: requests answered on the
worker's event loop): the cache misses that reach the loop together are ranked in one call (one encoder forward pass, one BM25 and ANN search, one stack predict).
Nobody waits for company: the batch closes after the loop has gone round LOOP_TICKS times, long enough for the
requests already read from the sockets to join it. Under load, misses arrive while a batch runs, and the next
batch takes them all.

MicroBatcher (with SHOPFUSION_THREADS > 1): query encodings of requests running in threads. A request alone is
encoded at once, in its own thread. While other requests are in flight, the first one waits up to
`max_wait_ms` for company and up to `max_batch` queries are encoded in one forward pass.

A query's int8 embedding can differ slightly with its batch (dynamic quantization scales the activations of
the whole batch); each answer is still one fused list, cached as it was first computed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

# rounds of the event loop a batch stays open: BentoML's timeout middleware runs each request in a task of its
# own, so a request read in the same round as the first one reaches the batcher a round or two later
LOOP_TICKS = 3


class LoopBatcher:
    """`await submit(item)` returns once `run(items)` has handled a batch holding it (an error in run is raised
    in every request of that batch). One per event loop; no locking: everything runs on the loop."""

    def __init__(self, run: Callable[[list], None], max_batch: int, ticks: int = LOOP_TICKS):
        self._run, self.max_batch, self.ticks = run, max_batch, ticks
        self._waiting: list[tuple[object, asyncio.Future]] = []
        self._open = False  # a flush is scheduled
        self.batches = 0
        self.items = 0

    async def submit(self, item) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self.max_batch:
            self._flush()
        elif not self._open:
            self._open = True
            loop.call_soon(self._tick, self.ticks)
        await future

    def _tick(self, left: int) -> None:
        if left > 1 and len(self._waiting) < self.max_batch:
            asyncio.get_running_loop().call_soon(self._tick, left - 1)
            return
        self._open = False
        while self._waiting:
            self._flush()

    def _flush(self) -> None:
        batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        try:
            self._run([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - each request of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.batches += 1
            self.items += len(batch)
        for _, future in batch:
            if not future.done():
                future.set_result(None)


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
