"""Contract tests of the BentoML service over HTTP: every endpoint, auth, bad input, fallbacks, the
restart that must lose no feedback, and the refusal to start on a missing or corrupted artifact."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from pipelines.feedback.log import EVENTS, served_lists
from pipelines.serving.schemas import RankedResponse
from tests.server import KEYS, REPO, Server

pytestmark = pytest.mark.integration  # every test starts `bentoml serve`


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    running = Server(tiny_bundle["bundle"], tmp_path_factory.mktemp("http")).wait_ready()
    yield running
    running.stop()


def post(server, path, body, key=KEYS[0], **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30, **kwargs)


def field_errors(response) -> set[str]:
    return {str(error["loc"][-1]) for error in response.json()["detail"]}


def test_probes_answer_without_a_key(server):
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(server.url + probe, timeout=5).status_code == 200


@pytest.mark.parametrize("path,body", [
    ("/search", {"query": "garden hose"}), ("/recommend", {"user_id": "u1"}),
    ("/similar", {"item_id": "P000001"}), ("/feedback", {"request_id": "r", "user_id": "u", "item_id": "i",
                                                         "event_type": "click"})])
def test_every_endpoint_needs_a_valid_key(server, path, body):
    assert post(server, path, body, key=None).status_code == 401
    assert post(server, path, body, key="wrong").status_code == 401
    assert post(server, path, body, key=KEYS[1]).status_code == 200
    assert httpx.get(server.url + "/metrics", timeout=5).status_code == 401


def test_search_answers_with_scores_explanations_and_ids(server):
    response = post(server, "/search", {"query": "garden hose", "k": 7, "filters": {"price_min": 1}})
    assert response.status_code == 200
    answer = response.json()
    RankedResponse.model_validate(answer)  # the body is the schema the OpenAPI document publishes
    assert len(answer["items"]) == 7 and answer["model_version"] == "test" and answer["request_id"]
    for item in answer["items"]:
        assert item["price"] >= 1
        assert sum(item["explanation"]["contributions"].values()) + item["explanation"]["base"] == \
            pytest.approx(item["score"], abs=1e-4)


def test_recommend_and_similar_fall_back_for_unknown_ids(server):
    cold = post(server, "/recommend", {"user_id": "never-seen", "k": 4}).json()
    RankedResponse.model_validate(cold)
    assert cold["fallback"] == "popularity" and len(cold["items"]) == 4
    unknown = post(server, "/similar", {"item_id": "NO-SUCH-ITEM", "k": 3}).json()
    assert unknown["fallback"] == "unknown_item" and len(unknown["popular"]) == 3


@pytest.mark.parametrize("path,body,field", [
    ("/search", {"query": "   "}, "query"),
    ("/search", {"query": "hose", "k": 0}, "k"),
    ("/search", {"query": "hose", "k": 101}, "k"),
    ("/search", {"query": "hose", "k": "ten"}, "k"),
    ("/search", {"query": ["hose"]}, "query"),
    ("/search", {"k": 5}, "query"),
    ("/search", {"query": "hose", "filters": {"price_min": 50, "price_max": 10}}, "filters"),
    ("/search", {"query": "hose", "filters": {"price_min": -1}}, "price_min"),
    ("/recommend", {"k": 5}, "user_id"),
    ("/recommend", {"user_id": "u", "context_item_ids": "P1"}, "context_item_ids"),
    ("/similar", {"item_id": ""}, "item_id"),
    ("/feedback", {"request_id": "r", "user_id": "u", "item_id": "i", "event_type": "like"}, "event_type"),
])
def test_bad_input_gets_422_naming_the_field(server, path, body, field):
    response = post(server, path, body)
    assert response.status_code == 422, response.text
    assert field in field_errors(response)


def test_a_rejected_request_is_logged_by_its_fields_never_its_values(server):
    response = post(server, "/search", {"query": "call jane.doe@example.com", "k": "ten"})
    assert response.status_code == 422 and "jane.doe" not in response.text
    time.sleep(0.5)  # the worker's log line reaches the file
    output = server.output()
    assert "invalid fields k" in output and "jane.doe" not in output and "input_value" not in output


def test_oversized_and_malformed_bodies_get_422(server):
    huge = post(server, "/search", {"query": "x" * 20_000})
    assert huge.status_code == 422 and field_errors(huge) == {"body"}
    malformed = httpx.post(server.url + "/search", content=b"{not json", timeout=10,
                           headers={"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"})
    assert malformed.status_code in (400, 422)
    assert malformed.status_code != 500


def test_openapi_document_and_metrics(server):
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    document = httpx.get(server.url + "/docs.json", headers=auth, timeout=10).json()
    assert {"/search", "/recommend", "/similar", "/feedback"} <= set(document["paths"])
    post(server, "/search", {"query": "hose"})
    metrics = httpx.get(server.url + "/metrics", headers=auth, timeout=10).text
    assert "shopfusion_cache_total" in metrics and 'endpoint="/search"' in metrics


def endpoint_labels(server) -> set[str]:
    import re

    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=10).text
    return set(re.findall(r'endpoint="([^"]*)"', metrics))


def test_random_unknown_paths_leave_metrics_bounded(server):
    import secrets

    post(server, "/search", {"query": "hose"})
    before = endpoint_labels(server)
    for index in range(300):
        path = f"/{secrets.token_hex(6)}/user{index}@example.com"
        key = KEYS[0] if index % 2 else None
        reply = httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10)
        assert reply.status_code == (404 if key else 401)
    reply = httpx.get(server.url + "/static_content/" + secrets.token_hex(6), timeout=10)
    assert reply.status_code == 401
    after = endpoint_labels(server)
    assert len(after - before) <= 2 and after - before <= {"/unknown", "/static_content"}
    assert not any("@" in label for label in after)
    assert post(server, "/search", {"query": "hose"}).status_code == 200  # known paths still routed


def test_over_its_rate_a_key_gets_429_with_retry_after(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"]["serving"]["limits"] = {"rate_per_second": 0.2, "burst": 3, "max_concurrent": 8}
    manifest_path.write_text(json.dumps(manifest))
    limited = Server(bundle, tmp_path).wait_ready()
    try:
        statuses = [post(limited, "/search", {"query": "hose"}) for _ in range(4)]
        assert [reply.status_code for reply in statuses] == [200, 200, 200, 429]
        assert int(statuses[-1].headers["retry-after"]) >= 1
        assert post(limited, "/search", {"query": "hose"}, key=KEYS[1]).status_code == 200  # another key's bucket
        assert httpx.get(limited.url + "/readyz", timeout=10).status_code == 200  # probes are never limited
        metrics = httpx.get(limited.url + "/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=10).text
        assert 'shopfusion_limited_total{reason="rate"} 1.0' in metrics
    finally:
        limited.stop()


def test_feedback_survives_a_crash_and_restart(tiny_bundle, tmp_path):
    first = Server(tiny_bundle["bundle"], tmp_path).wait_ready()
    sent = []
    for number in range(20):
        served = post(first, "/search", {"query": f"hose {number}", "k": 3, "user_id": "shopper-7"}).json()
        reply = post(first, "/feedback", {"request_id": served["request_id"], "user_id": "shopper-7",
                                          "item_id": served["items"][0]["item_id"], "event_type": "click"})
        assert reply.status_code == 200 and reply.json()["accepted"]
        sent.append(served["request_id"])
    first.stop(signal.SIGKILL)  # a crash: no shutdown hook runs
    events = [json.loads(line) for line in (tmp_path / "feedback" / EVENTS).read_text().splitlines()]
    assert [event["request_id"] for event in events] == sent
    second = Server(tiny_bundle["bundle"], tmp_path).wait_ready()
    try:
        served = post(second, "/search", {"query": "hose", "k": 3}).json()
        assert post(second, "/feedback", {"request_id": served["request_id"], "user_id": "shopper-7",
                                          "item_id": served["items"][0]["item_id"], "event_type": "purchase"}
                    ).status_code == 200
    finally:
        second.stop()
    lists = served_lists(tmp_path / "feedback")
    assert set(sent) | {served["request_id"]} <= set(lists.loc[lists["clicked"].map(len) > 0, "request_id"])
    assert "shopper-7" not in (tmp_path / "feedback" / EVENTS).read_text()


@pytest.mark.parametrize("damage,message", [("corrupt", "model artifact corrupted"), ("delete", "model artifact missing"),
                                            ("manifest", "manifest not found")])
def test_service_refuses_to_start_on_a_bad_bundle(tiny_bundle, tmp_path, damage, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], bundle)
    target = bundle / "recall" / "bm25" / "bm25.joblib"
    if damage == "corrupt":
        target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    elif damage == "delete":
        target.unlink()
    else:
        (bundle / "manifest.json").unlink()
    server = Server(bundle, tmp_path)
    try:
        assert server.process.wait(timeout=60) == 3
    finally:
        server.stop()
    output = server.output()
    assert "shopfusion: refusing to start" in output and message in output
    if damage != "manifest":
        assert "bm25.joblib" in output


def test_service_refuses_to_start_without_an_api_key(tiny_bundle, tmp_path):
    server = Server(tiny_bundle["bundle"], tmp_path, keys=())
    try:
        assert server.process.wait(timeout=60) == 3
    finally:
        server.stop()
    assert "shopfusion: refusing to start: no API key configured" in server.output()


def _raw_get(connection: socket.socket, path: str) -> tuple[bytes, bytes]:
    """One GET on an open connection: the response head and body (read by content-length)."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += connection.recv(65536)
    return head.lower(), body


def test_a_keep_alive_connection_is_closed_after_its_request_quota(server, tiny_bundle):
    """The N-th response of a connection says `connection: close` and the server closes it (the workers then
    share the load: pipelines/serving/connections.py); the ones before keep the connection open."""
    quota = json.loads((Path(tiny_bundle["bundle"]) / "manifest.json").read_text())["serving"]["serving"][
        "max_requests_per_connection"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        heads = [_raw_get(connection, "/healthz")[0] for _ in range(quota)]
        assert not any(b"connection: close" in head for head in heads[:-1])
        assert b"connection: close" in heads[-1]
        assert connection.recv(1) == b""  # closed by the server


def concurrent_searches(server: Server, count: int = 12) -> tuple[list[str], list[dict]]:
    """`count` different searches sent from 6 threads at once; each answered 200 with a complete list of its own."""
    from concurrent.futures import ThreadPoolExecutor

    queries = [f"garden hose {number}" for number in range(count)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda query: post(server, "/search", {"query": query, "k": 4}), queries))
    assert [answer.status_code for answer in answers] == [200] * count
    answers = [answer.json() for answer in answers]
    assert all(len(answer["items"]) == 4 for answer in answers)
    assert len({answer["request_id"] for answer in answers}) == count
    return queries, answers


def test_concurrent_misses_batched_on_the_event_loop_get_complete_answers_of_their_own(server):
    """The default (serving.batching.on_loop): concurrent cache misses of the worker are ranked in batches."""
    queries, answers = concurrent_searches(server)
    assert not any(answer["cached"] for answer in answers)  # all misses: they went through the batcher
    again = post(server, "/search", {"query": queries[-1], "k": 4}).json()
    assert again["cached"] is True and len(again["items"]) == 4  # each batched list was cached


def test_with_threads_per_worker_concurrent_requests_are_answered_in_the_thread_pool(tiny_bundle, tmp_path):
    """SHOPFUSION_THREADS=3: requests leave the event loop for a pool of 3 threads (where their query encodings
    can share micro-batches); every concurrent answer is complete and its own."""
    threaded = Server(tiny_bundle["bundle"], tmp_path, threads=3).wait_ready()
    try:
        _, answers = concurrent_searches(threaded)
        first = answers[0]
        reply = post(threaded, "/feedback", {"request_id": first["request_id"], "user_id": "someone",
                                             "item_id": first["items"][0]["item_id"], "event_type": "click"})
        assert reply.status_code == 200 and reply.json()["known_request"] is True
    finally:
        threaded.stop()


def test_without_loop_batching_each_request_is_answered_alone_on_the_event_loop(tiny_bundle, tmp_path):
    """serving.batching.on_loop false: every request ranked by itself on the worker's event loop, in arrival order
    (with it, the default, concurrent misses are ranked in one batch: the other tests here)."""
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"]["serving"].setdefault("batching", {})["on_loop"] = False
    manifest_path.write_text(json.dumps(manifest))
    alone = Server(bundle, tmp_path).wait_ready()
    try:
        queries, _ = concurrent_searches(alone)
        again = post(alone, "/search", {"query": queries[0], "k": 4}).json()
        assert again["cached"] is True and len(again["items"]) == 4  # each list was cached
    finally:
        alone.stop()
