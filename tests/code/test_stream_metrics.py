"""A processor's Prometheus metrics (issue #18, point 6) against a real redis-server: entries by result, the
freshness of applied events, the group's pending entries and their age, the undelivered ones, dead letters;
served over HTTP as Prometheus text."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import httpx
import pytest
import redis

from pipelines.bench.served import RedisServer, free_port
from pipelines.core.config import load_settings
from pipelines.core.privacy import pseudonym
from pipelines.feedback.live_state import LiveState
from pipelines.feedback.stream import StreamNames, StreamProcessor, ensure_group, publish
from pipelines.feedback.stream_metrics import ProcessorMetrics, entry_seconds
from tests.conftest import REPO

pytestmark = pytest.mark.integration
SETTINGS = load_settings(REPO / "params.yaml")


def events(count: int, start: int = 0) -> list[dict]:
    now = datetime.now(timezone.utc).isoformat()
    return [{"event_id": f"m-{n}", "user_id": pseudonym(f"shopper-{n % 3}", b"k"), "item_id": f"i{n % 4}",
             "event_type": "view", "timestamp": now, "session_id": None} for n in range(start, start + count)]


def value(metrics: ProcessorMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_metrics_count_results_freshness_and_lag():
    names = StreamNames.from_prefix("metrics:")
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        state = LiveState.from_params(client, names.state_prefix, SETTINGS.stream, 1800)
        metrics = ProcessorMetrics(refresh_seconds=0)
        worker = StreamProcessor(client, names, state, "c1", batch=50, block_ms=20, claim_idle_ms=60000,
                                 metrics=metrics)
        batch = events(6)
        publish(client, names, batch + [batch[0]], 10_000)  # a duplicate publication
        client.xadd(names.stream, {"event_id": "bad", "user_id": "raw@example.com"})  # another producer's mistake
        while worker.run_once():
            pass
        assert value(metrics, "shopfusion_stream_entries_total", result="applied") == 6
        assert value(metrics, "shopfusion_stream_entries_total", result="duplicate") == 1
        assert value(metrics, "shopfusion_stream_entries_total", result="dead_letter") == 1
        assert value(metrics, "shopfusion_stream_freshness_seconds_count") == 6
        assert 0 <= value(metrics, "shopfusion_stream_freshness_seconds_sum") < 6 * 5.0

        publish(client, names, events(3, start=10), 10_000)
        ensure_group(client, names)
        client.xreadgroup(names.group, "dead-consumer", {names.stream: ">"}, count=2)  # read, never acknowledged
        time.sleep(0.05)
        metrics.refresh_lag(client, names)
        assert value(metrics, "shopfusion_stream_pending") == 2
        assert value(metrics, "shopfusion_stream_oldest_pending_seconds") >= 0.05
        assert value(metrics, "shopfusion_stream_undelivered") == 1
        assert value(metrics, "shopfusion_stream_dead_letters") == 1

        port = free_port()
        metrics.serve(port)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'shopfusion_stream_entries_total{result="applied"} 6.0' in text
        assert "shopfusion_stream_freshness_seconds_bucket" in text and "shopfusion_stream_pending 2.0" in text


def test_entry_ids_carry_their_acceptance_time():
    assert entry_seconds("1700000000123-4") == pytest.approx(1700000000.123)
