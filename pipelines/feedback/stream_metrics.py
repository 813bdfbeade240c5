"""Prometheus metrics of a stream processor (issue #18), served on its own port (`stream.metrics_port`).

- shopfusion_stream_entries_total{result}: entries handled (applied, duplicate, dead_letter, trimmed); events/s is
  rate(shopfusion_stream_entries_total{result="applied"}[1m]), summed over the processors.
- shopfusion_stream_freshness_seconds: from an event's acceptance (its stream entry id: Redis's clock when intake
  wrote it) to its application to the live state, from when on /recommend reads it.
- shopfusion_stream_pending, shopfusion_stream_oldest_pending_seconds: the group's entries read and not yet
  acknowledged, and the age of the oldest (a dead processor's entries wait claim_idle_ms for another one).
- shopfusion_stream_undelivered: entries no processor has read yet (the group's lag).
- shopfusion_stream_dead_letters: entries in the dead-letter stream.
The gauges are read from Redis every `refresh_seconds`, so every processor reports the group's whole lag.
"""

from __future__ import annotations

import time

from pipelines.core.logs import get_logger

log = get_logger(__name__)

FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RESULTS = ("applied", "duplicate", "dead_letter", "trimmed")


def entry_seconds(entry_id: str) -> float:
    """When Redis wrote a stream entry (its id is <milliseconds>-<sequence>), in epoch seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


class ProcessorMetrics:
    def __init__(self, refresh_seconds: float = 5.0):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        entries = Counter("shopfusion_stream_entries", "stream entries a processor handled, by result", ["result"],
                          registry=self.registry)
        self.entries = {result: entries.labels(result=result) for result in RESULTS}
        self.freshness = Histogram("shopfusion_stream_freshness_seconds",
                                   "event accepted (stream entry written) -> applied to the live state",
                                   buckets=FRESHNESS_BUCKETS, registry=self.registry)
        self.pending = Gauge("shopfusion_stream_pending", "entries read by the group, not yet acknowledged",
                             registry=self.registry)
        self.oldest_pending = Gauge("shopfusion_stream_oldest_pending_seconds",
                                    "age of the oldest unacknowledged entry (0: none)", registry=self.registry)
        self.undelivered = Gauge("shopfusion_stream_undelivered", "entries no processor of the group has read yet",
                                 registry=self.registry)
        self.dead_letters = Gauge("shopfusion_stream_dead_letters", "entries in the dead-letter stream",
                                  registry=self.registry)
        self.refresh_seconds, self._refreshed = refresh_seconds, 0.0

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)
        log.info("stream processor metrics served", extra={"port": port})

    def handled(self, result: str, entry_ids: list[str], now: float | None = None) -> None:
        if not entry_ids:
            return
        self.entries[result].inc(len(entry_ids))
        if result == "applied":
            now = time.time() if now is None else now
            for entry_id in entry_ids:
                self.freshness.observe(max(0.0, now - entry_seconds(entry_id)))

    def refresh_lag(self, client, names, force: bool = False) -> None:
        """The group's pending entries, the oldest one's age, the undelivered entries and the dead letters."""
        if not force and time.monotonic() - self._refreshed < self.refresh_seconds:
            return
        self._refreshed = time.monotonic()
        summary = client.xpending(names.stream, names.group)
        self.pending.set(summary["pending"])
        oldest = summary.get("min")
        oldest = oldest.decode() if isinstance(oldest, bytes) else oldest
        self.oldest_pending.set(max(0.0, time.time() - entry_seconds(oldest)) if oldest else 0.0)
        group = next((group for group in client.xinfo_groups(names.stream)
                      if _text(group.get("name")) == names.group), {})
        self.undelivered.set(group.get("lag") or 0)
        self.dead_letters.set(client.xlen(names.dead_letter))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
