"""7. Abuse. A key over its rate gets 429 with Retry-After while another key is served; a worker over its
concurrency cap answers 429 at once; random keys all get 401, each failure logged with the key's id (never the
key) and counted; random unknown paths leave /metrics' label set bounded. The limits are lowered in a copy of
the bundle's manifest so a few seconds of traffic reach them (the mechanism is the one that ships)."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import KEYS, SearchLoad, Server, bundle_with_serving, metric_value

RATE_LIMITS = {"rate_per_second": 5.0, "burst": 10, "max_concurrent": 64}
CAP_LIMITS = {"rate_per_second": 100000.0, "burst": 100000, "max_concurrent": 1}
THREADS = 8


def _statuses(url: str, requests: list[tuple[str, str, dict]], fault: Fault) -> list[httpx.Response]:
    """(method, path, headers) each sent once, THREADS at a time."""
    local = threading.local()
    clients = []

    def send(request):
        method, path, headers = request
        if not hasattr(local, "http"):  # one keep-alive connection a thread: thousands of new ones would leave
            local.http = httpx.Client(timeout=30)  # as many sockets in TIME_WAIT for the scenarios after this one
            clients.append(local.http)
        return local.http.request(method, url + path, headers=headers,
                                  json={"query": "hose"} if method == "POST" else None)

    with ThreadPoolExecutor(THREADS) as pool:
        replies = list(pool.map(send, requests))
    for http in clients:
        http.close()
    fault.requests += len(replies)
    fault.errors += sum(reply.status_code >= 500 for reply in replies)
    return replies


def _endpoint_labels(server: Server) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.labels["endpoint"] for family in text_string_to_metric_families(server.metrics())
            for sample in family.samples if "endpoint" in sample.labels}


def _rate(context: FaultContext, fault: Fault) -> None:
    folder = context.folder("abuse_rate")
    bundle = bundle_with_serving(context.bundle, folder / "bundle", limits=RATE_LIMITS)
    with Server(bundle, folder, workers=context.params.workers) as server:
        over = [httpx.post(server.url + "/search", headers=server.headers, json={"query": "hose"}, timeout=30)
                for _ in range(3 * RATE_LIMITS["burst"] * context.params.workers)]
        other = httpx.post(server.url + "/search", headers={"Authorization": f"Bearer {KEYS[1]}"},
                           json={"query": "hose"}, timeout=30)
        limited = metric_value(server.metrics(), "shopfusion_limited", reason="rate")
    refused = [reply for reply in over if reply.status_code == 429]
    fault.requests += len(over) + 1
    fault.errors += sum(reply.status_code >= 500 for reply in over)
    fault.figures.update(rate_requests=len(over), rate_429=len(refused), rate_429_counted=limited)
    fault.check("over its rate a key gets 429", len(refused) > 0 and len(over) - len(refused) >= RATE_LIMITS["burst"])
    fault.check("every 429 has a Retry-After", all(int(reply.headers.get("retry-after", "0")) >= 1 for reply in refused))
    fault.check("another key is still served", other.status_code == 200)
    fault.check("429s counted in /metrics", limited == len(refused))


def _cap(context: FaultContext, fault: Fault) -> None:
    folder = context.folder("abuse_cap")
    bundle = bundle_with_serving(context.bundle, folder / "bundle", limits=CAP_LIMITS)
    queries = [f"{query} {number}" for number in range(50) for query in context.queries(50)]  # misses: slow enough
    with Server(bundle, folder, workers=context.params.workers, threads=4) as server:
        with SearchLoad(server.url, server.headers, queries, clients=16) as load:
            time.sleep(min(context.params.load_seconds, 8))
        capped = metric_value(server.metrics(), "shopfusion_limited", reason="concurrency")
    fault.requests += load.requests
    fault.errors += load.errors
    fault.figures.update(cap_requests=load.requests, cap_429=load.statuses.get(429, 0), cap_429_counted=capped)
    fault.check("over its worker's cap a request gets 429", load.statuses.get(429, 0) > 0 and capped > 0)
    fault.check("under the cap requests are served", load.statuses.get(200, 0) > 0)


def _keys_and_paths(context: FaultContext, fault: Fault) -> None:
    folder = context.folder("abuse_keys")
    with Server(context.bundle, folder, workers=context.params.workers) as server:
        random_keys = [secrets.token_urlsafe(24) for _ in range(context.params.abuse_keys)]
        replies = _statuses(server.url, [("POST", "/search", {"Authorization": f"Bearer {key}"}) for key in random_keys],
                            fault)
        before = _endpoint_labels(server)
        size_before = len(server.metrics())
        paths = [f"/{secrets.token_hex(6)}/{number}@example.com" for number in range(context.params.abuse_paths)]
        _statuses(server.url, [("GET", path, server.headers) for path in paths], fault)
        after, size_after = _endpoint_labels(server), len(server.metrics())
        failures = metric_value(server.metrics(), "shopfusion_auth_failures", reason="invalid")
        output = server.output()
    logged = [line for line in output.splitlines() if "authentication failed" in line]
    fault.figures.update(random_keys=len(random_keys), random_keys_401=sum(r.status_code == 401 for r in replies),
                         auth_failures_counted=failures, auth_failure_lines=len(logged), random_paths=len(paths),
                         new_endpoint_labels=sorted(after - before), metrics_bytes_before=size_before,
                         metrics_bytes_after=size_after)
    fault.check("every random key gets 401", all(reply.status_code == 401 for reply in replies))
    fault.check("failed authentications counted", failures == len(random_keys))
    fault.check("failed authentications logged with the key's id", len(logged) >= len(random_keys)
                and all('"key_id":"' in line for line in logged[:len(random_keys)]))
    fault.check("no presented key in the log", not any(key in output for key in random_keys))
    fault.check("random paths leave /metrics bounded", after - before <= {"/unknown", "/static_content"}
                and size_after - size_before < 16_384)


def run(context: FaultContext) -> Fault:
    fault = Fault()
    _rate(context, fault)
    _cap(context, fault)
    _keys_and_paths(context, fault)
    fault.check("no 5xx", fault.errors == 0)
    return fault
