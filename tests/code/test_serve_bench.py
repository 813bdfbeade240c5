"""The pure parts of benchmarks/serve_latency.py: percentiles, query samplers, cache counters, the JSON form."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from benchmarks.serve_latency import (
    cache_counts,
    deep_merge,
    distinct_draws,
    hit_share,
    level_summary,
    median_cold_start,
    percentile,
    repeat_share,
    result_document,
    zipf_draws,
)


def test_percentile_interpolates_between_closest_ranks():
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 0) == 10.0 and percentile(values, 100) == 50.0
    assert percentile(values, 95) == pytest.approx(48.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_level_summary_counts_errors_in_throughput_but_not_in_latency():
    figures = level_summary([1.0] * 99 + [100.0], errors=2, seconds=2.0)
    assert figures["p50_ms"] == 1.0
    assert figures["p99_ms"] == pytest.approx(1.99)
    assert figures["errors"] == 2 and figures["requests"] == 102
    assert figures["rps"] == 51.0


def test_zipf_draws_are_seeded_and_skewed_towards_a_few_queries():
    pool = [f"query {i}" for i in range(500)]
    draws = zipf_draws(pool, 5000, seed=3, exponent=1.0)
    assert draws == zipf_draws(pool, 5000, seed=3, exponent=1.0)
    assert draws != zipf_draws(pool, 5000, seed=4, exponent=1.0)
    assert set(draws) <= set(pool)
    counts = Counter(draws).most_common()
    top_share = counts[0][1] / len(draws)  # 1 / H(500) = 0.147 expected
    assert 0.11 < top_share < 0.19
    assert len(counts) > 250  # a long tail, not a handful of queries
    uniform = Counter(zipf_draws(pool, 5000, seed=3, exponent=0.0)).most_common(1)[0][1] / 5000
    assert uniform < 0.01
    with pytest.raises(ValueError):
        zipf_draws([], 3, seed=0)


def test_distinct_draws_never_repeat_a_query_up_to_case_and_spacing():
    pool = ["Drill Bits", "drill  bits", "hammer", "saw", "Saw "]
    draws = distinct_draws(pool, 3, seed=1)
    assert sorted(draws) == ["drill bits", "hammer", "saw"]
    assert repeat_share(draws) == 0.0
    with pytest.raises(ValueError, match="the pool has 3"):
        distinct_draws(pool, 4, seed=1)


def test_repeat_share_is_the_share_already_seen():
    assert repeat_share(["a", "b", "A", "a", "c"]) == pytest.approx(2 / 5)
    assert repeat_share([]) == 0.0


def test_cache_counts_sum_every_label_set_of_the_counter():
    text = """# HELP shopfusion_cache_total hot-request cache lookups
# TYPE shopfusion_cache_total counter
shopfusion_cache_total{result="hit",worker="0"} 30.0
shopfusion_cache_total{result="miss",worker="0"} 10.0
shopfusion_cache_total{result="hit",worker="1"} 5.0
shopfusion_cache_created{result="hit"} 1.7e9
shopfusion_fallbacks_total{endpoint="search",kind="x"} 4.0
"""
    counts = cache_counts(text)
    assert counts == {"hit": 35.0, "miss": 10.0}
    assert hit_share({"hit": 5.0, "miss": 5.0}, counts) == pytest.approx(30 / 35, abs=1e-4)
    assert hit_share(counts, counts) is None


def test_result_document_has_the_issue_form_first():
    level = {"p50_ms": 5.0, "p95_ms": 9.0, "p99_ms": 12.0, "rps": 300.0, "errors": 0}
    document = result_document({32: level, 1: level, 8: level}, 4.2, {"speedup": 3.5, "ndcg_loss_pct": 1.1},
                               dataset="home-depot")
    assert list(document) == ["levels", "cold_start_s", "student_vs_teacher", "dataset"]
    assert list(document["levels"]) == ["1", "8", "32"]
    assert document["levels"]["8"] == level and document["cold_start_s"] == 4.2
    with pytest.raises(ValueError, match="level 8: missing rps"):
        result_document({8: {k: v for k, v in level.items() if k != "rps"}}, 1.0, {"speedup": 1, "ndcg_loss_pct": 0})
    with pytest.raises(ValueError, match="speedup"):
        result_document({8: level}, 1.0, {"ndcg_loss_pct": 0})


def test_deep_merge_overrides_nested_keys_and_keeps_the_rest():
    base = {"text": {"dense": {"field": "texts", "batch_size": 128}, "bm25": {"k1": 1.2}}, "ranking": {"a": [1]}}
    merged = deep_merge(base, {"text": {"dense": {"field": "titles"}}, "ranking": {"a": [2]}})
    assert merged == {"text": {"dense": {"field": "titles", "batch_size": 128}, "bm25": {"k1": 1.2}}, "ranking": {"a": [2]}}
    assert base["text"]["dense"]["field"] == "texts"


def test_the_cold_start_is_the_median_start_and_keeps_every_start():
    starts = [{"ready_s": 9.0, "first_search_s": 9.1}, {"ready_s": 17.0, "first_search_s": 17.1},
              {"ready_s": 7.2, "first_search_s": 7.3}]
    assert median_cold_start(starts) == {"ready_s": 9.0, "first_search_s": 9.1, "starts_s": [9.1, 17.1, 7.3]}
    assert median_cold_start(starts[:2])["first_search_s"] == 9.1  # even count: the lower middle


def test_the_load_client_writes_a_whole_request_and_reads_whole_responses():
    import asyncio

    from benchmarks.serve_latency import API_KEY, read_response, search_request

    request = search_request(3000, "garden hose", keep_alive=False)
    head, body = request.split(b"\r\n\r\n")
    assert head.startswith(b"POST /search HTTP/1.1\r\n") and f"Bearer {API_KEY}".encode() in head
    assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"query": "garden hose", "k": 10}

    async def parse(*responses: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(responses))
        reader.feed_eof()
        return [await read_response(reader) for _ in responses]

    keep = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
    close = b"HTTP/1.1 422 Unprocessable Entity\r\nConnection: close\r\nContent-Length: 3\r\n\r\n{ }"
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert asyncio.run(parse(keep, close, chunked)) == [(200, False), (422, True), (200, False)]
    with pytest.raises(ValueError):
        asyncio.run(parse(b"HTTP/1.1 200 OK\r\n\r\n{}"))
