"""Serving latency of the bento built on the Home Depot catalog (issue #5, point 5).

    .venv/bin/python benchmarks/serve_latency.py --json benchmarks/results/serve_latency.json

1. Builds a workspace (benchmarks/params.yaml serve.work_dir, git-ignored) by calling the pipeline's stage
   functions on Home Depot: ingest, validate, clean, features, finetune (short), recall, fuse,
   evaluate, distill, package, with params.yaml overridden for the benchmark (written to
   <work>/params.yaml) and a BentoML store of its own (<work>/bentoml). --reuse keeps stages whose
   outputs exist. Home Depot has no behaviour events, so there are no recommend requests: fuse and
   evaluate skip that task ({"requests": 0, "skipped": reason}) and the bento answers /recommend with
   its popularity fallback ("no_recommend_model"); /recommend is not measured.
2. Serves the bento (`bentoml serve`, serve.workers workers) and times the cold start: process
   start to the first 200 of /readyz and to the first successful /search.
3. From another process (spawned), a minimal HTTP/1.1 client (asyncio streams on uvloop, one request in
   flight per keep-alive connection) over loopback sends /search at each
   concurrency of serve.concurrency; queries are the test split's, drawn with a seeded
   Zipf popularity (hot queries repeat, the service caches them). One more pass sends queries that
   were never sent before (train and valid queries, each once): the cache cannot help there.
4. Compares the distilled, quantized student with the teacher (per-request speed, dense NDCG@10 on
   the test queries), and the served fused ranking's NDCG@10 with each.

Holds /tmp/shopfusion-heavy.lock (fcntl) while building and while measuring: do not wrap it in
`flock` on the same file (it would wait for itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true",
               "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
API_KEY = "serve-bench-key"
LOCK_FILE = "/tmp/shopfusion-heavy.lock"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
CACHE_METRIC = re.compile(r'^shopfusion_cache_total\{[^}]*result="(hit|miss)"[^}]*\}\s+([0-9.eE+-]+)', re.M)


class ServeBenchParams(BaseModel):
    """benchmarks/params.yaml `serve:`."""

    model_config = ConfigDict(extra="forbid")
    work_dir: str
    bi_encoder_max_steps: int = Field(ge=1)
    cross_encoder_max_steps: int = Field(ge=1)
    recommend_components: list[str]
    ann_threshold: int = Field(ge=1)
    workers: int = Field(ge=1)
    concurrency: list[int]
    requests: int = Field(ge=1)
    requests_single: int = Field(ge=1)
    warmup: int = Field(ge=0)
    distinct_concurrency: int = Field(ge=1)
    zipf_exponent: float = Field(ge=0)
    seed: int
    ready_timeout_s: float = Field(gt=0)
    cold_starts: int = Field(ge=1)  # starts timed (the first one also serves the load); cold_start_s: their median
    request_timeout_s: float = Field(gt=0)


# ---------------------------------------------------------------- pure parts (tests/code/test_serve_bench.py)

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    if not len(values):
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def level_summary(latencies_ms: Sequence[float], errors: int, seconds: float) -> dict:
    """The issue's per-level figures: p50/p95/p99 of successful requests, requests/s over the pass, errors."""
    completed = len(latencies_ms) + errors
    return {"p50_ms": round(percentile(latencies_ms, 50), 2), "p95_ms": round(percentile(latencies_ms, 95), 2),
            "p99_ms": round(percentile(latencies_ms, 99), 2),
            "rps": round(completed / seconds, 1) if seconds > 0 else 0.0, "errors": int(errors),
            "requests": completed}


def zipf_draws(pool: Sequence[str], n: int, seed: int, exponent: float = 1.0) -> list[str]:
    """n queries drawn with P(query of popularity rank r) ~ 1 / r ** exponent, ranks a seeded permutation of pool."""
    if not len(pool):
        raise ValueError("no queries to draw from")
    rng = np.random.default_rng(seed)
    by_popularity = rng.permutation(len(pool))
    weights = 1.0 / np.arange(1, len(pool) + 1, dtype=float) ** exponent
    draws = rng.choice(len(pool), size=n, p=weights / weights.sum())
    return [pool[by_popularity[draw]] for draw in draws]


def distinct_draws(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """n different queries (case and spacing ignored), in a seeded order."""
    unique = list(dict.fromkeys(" ".join(query.split()).casefold() for query in pool))
    if len(unique) < n:
        raise ValueError(f"{n} distinct queries asked, the pool has {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))[:n]
    return [unique[index] for index in order]


def repeat_share(queries: Sequence[str]) -> float:
    """Share of requests whose query was already sent earlier in the pass (what a warm cache could serve)."""
    seen, repeats = set(), 0
    for query in queries:
        key = " ".join(query.split()).casefold()
        repeats += key in seen
        seen.add(key)
    return repeats / len(queries) if queries else 0.0


def cache_counts(metrics_text: str) -> dict[str, float]:
    """hit and miss totals of the service's shopfusion_cache counter (summed over label sets)."""
    counts = {"hit": 0.0, "miss": 0.0}
    for result, value in CACHE_METRIC.findall(metrics_text):
        counts[result] += float(value)
    return counts


def hit_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
    return round(hits / (hits + misses), 4) if hits + misses > 0 else None


def result_document(levels: dict[int, dict], cold_start_s: float, student_vs_teacher: dict, **extra) -> dict:
    """The issue's JSON form first (levels by concurrency as strings, cold_start_s, student_vs_teacher), extras after."""
    for concurrency, figures in levels.items():
        missing = {"p50_ms", "p95_ms", "p99_ms", "rps", "errors"} - set(figures)
        if missing:
            raise ValueError(f"level {concurrency}: missing {', '.join(sorted(missing))}")
    if not {"speedup", "ndcg_loss_pct"} <= set(student_vs_teacher):
        raise ValueError("student_vs_teacher needs speedup and ndcg_loss_pct")
    return {"levels": {str(concurrency): figures for concurrency, figures in sorted(levels.items())},
            "cold_start_s": cold_start_s, "student_vs_teacher": student_vs_teacher, **extra}


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


# ---------------------------------------------------------------- the workspace

@contextlib.contextmanager
def heavy_lock(path: str | None):
    """The machine-wide lock of long runs (fcntl, the same lock `flock` takes); None: no lock."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        started = time.perf_counter()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.perf_counter() - started
        if waited > 1:
            print(f"waited {waited:.0f} s for {path}", flush=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bench_params_file(work: Path, dataset: Path, bench: ServeBenchParams) -> Path:
    """params.yaml with the benchmark's overrides, written into the workspace."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")) or {}
    models = work / "models"
    overrides = {
        "ingest": {"source": "home-depot", "path": str(dataset)},
        "ranking": {"recommend_components": bench.recommend_components, "search_reranker": None},
        "finetune": {"bi_encoder": {"max_steps": bench.bi_encoder_max_steps},
                     "cross_encoder": {"max_steps": bench.cross_encoder_max_steps},
                     "checkpoint_dir": str(work / "checkpoints" / "finetune")},
        "text": {"dense": {"model_path": str(models / "finetune" / "bi_encoder"), "ann_threshold": bench.ann_threshold},
                 "cross_encoder": {"model_path": str(models / "finetune" / "cross_encoder")}},
        "sasrec": {"checkpoint_dir": None},
        "serving": {"feedback_dir": str(work / "serve" / "feedback")},
    }
    path = work / "params.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by benchmarks/serve_latency.py: params.yaml + the benchmark's overrides\n"
                    + yaml.safe_dump(deep_merge(raw, overrides), sort_keys=False), encoding="utf-8")
    return path


def pipeline_stages(work: Path, settings) -> list[tuple[str, Path, Callable[[], object]]]:
    """(name, the output that marks it done, the call) of every stage, in order."""
    from pipelines.stages.clean import clean
    from pipelines.stages.distill import distill
    from pipelines.stages.evaluate import evaluate
    from pipelines.stages.features import build_features
    from pipelines.stages.finetune import finetune
    from pipelines.stages.fuse import fit_fusion
    from pipelines.stages.ingest import ingest
    from pipelines.stages.package import package
    from pipelines.stages.recall import fit_recall
    from pipelines.stages.validate import validate

    data, models, metrics = work / "data", work / "models", work / "metrics"
    features, recall, fusion = data / "features", models / "recall", models / "fusion"
    return [
        ("ingest", data / "raw" / "queries.csv",
         lambda: ingest("home-depot", data / "raw", settings, settings.ingest.path)),
        ("validate", metrics / "validate.json",
         lambda: validate(data / "raw", data / "validated", settings, metrics / "validate.json")),
        ("clean", metrics / "clean.json", lambda: clean(data / "validated" / "valid", data / "clean", settings,
                                                         metrics / "clean.json")),
        ("features", features / "summary.json", lambda: build_features(data / "clean", features, settings)),
        ("finetune", metrics / "finetune.json",
         lambda: finetune(features, models / "finetune", settings, metrics / "finetune.json")),
        ("recall", recall / "components.json", lambda: fit_recall(features, recall, settings)),
        # Home Depot has no behaviour events: fuse and evaluate skip the recommend task (no requests)
        ("fuse", fusion / "search" / "weighted.json", lambda: fit_fusion(features, recall, fusion, settings)),
        ("evaluate", metrics / "evaluate.json",
         lambda: evaluate(features, recall, fusion, metrics / "evaluate.json", work / "plots" / "ndcg_at_k.csv",
                          settings)),
        ("distill", models / "student" / "student.json",
         lambda: distill(recall, features, models / "student", settings)),
        ("package", work / "bentos" / "bento.json",
         lambda: package(features, recall, fusion, models / "student", metrics / "evaluate.json", work / "bentos",
                         settings, ROOT)),
    ]


def build_workspace(work: Path, settings, reuse: bool) -> dict:
    """Run every stage (or keep it under --reuse when its output exists); seconds per stage and the bento info."""
    seconds, outputs = {}, {}
    for name, done_marker, run in pipeline_stages(work, settings):
        if reuse and done_marker.exists():
            seconds[name] = "reused"
            continue
        started = time.perf_counter()
        print(f"stage {name} ...", flush=True)
        outputs[name] = run()
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"stage {name}: {seconds[name]} s", flush=True)
    info = json.loads((work / "bentos" / "bento.json").read_text(encoding="utf-8"))
    return {"stage_seconds": seconds, "bento": info, "outputs": outputs}


# ---------------------------------------------------------------- serving

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(work: Path, port: int, workers: int) -> dict:
    return {**os.environ, **OFFLINE_ENV, "BENTOML_HOME": str(work / "bentoml"), "SHOPFUSION_API_KEYS": API_KEY,
            "SHOPFUSION_PORT": str(port), "SHOPFUSION_WORKERS": str(workers),
            "SHOPFUSION_FEEDBACK_DIR": str(work / "serve" / "feedback"),
            "SHOPFUSION_STATE_DIR": str(work / "serve" / "state")}


def start_server(work: Path, tag: str, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    """`bentoml serve <tag>` in a session of its own (so every worker it forks is stopped with it)."""
    import shutil

    shutil.rmtree(work / "serve", ignore_errors=True)  # fresh feedback log and bandit state: runs compare
    (work / "serve").mkdir(parents=True)
    log = open(log_path, "w")
    return subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", tag, "--port", str(port)],
                            cwd=str(work), env=server_env(work, port, workers), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _descendants(pid: int) -> list[int]:
    """Every process under pid (BentoML's workers run in process groups of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server and each of its workers (by id), SIGKILL to whatever is left after 20 s."""
    workers = _descendants(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (process.poll() is None or
                                               any(Path(f"/proc/{pid}").exists() for pid in alive)):
            time.sleep(0.1)
        if process.poll() is not None and not any(Path(f"/proc/{pid}").exists() for pid in alive):
            return


def wait_cold_start(process: subprocess.Popen, port: int, started: float, timeout_s: float, query: str) -> dict:
    """Seconds from process start to the first 200 of /readyz, then to the first 200 of /search."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    ready_s = None
    with httpx.Client(timeout=10) as client:
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                if ready_s is None and client.get(f"{base}/readyz").status_code == 200:
                    ready_s = time.perf_counter() - started
                if ready_s is not None:
                    answer = client.post(f"{base}/search", json={"query": query, "k": 10},
                                         headers={"Authorization": f"Bearer {API_KEY}"})
                    if answer.status_code == 200:
                        return {"ready_s": round(ready_s, 2), "first_search_s": round(time.perf_counter() - started, 2)}
            time.sleep(0.05)
    raise RuntimeError(f"the server was not ready within {timeout_s} s")


def read_cache_counts(port: int) -> dict[str, float]:
    import httpx

    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        return cache_counts(answer.text)
    except httpx.HTTPError:
        return {"hit": 0.0, "miss": 0.0}


# ---------------------------------------------------------------- the load (runs in a spawned process)

def search_request(port: int, query: str, keep_alive: bool = True) -> bytes:
    """One HTTP/1.1 POST /search, whole, as the client writes it."""
    body = json.dumps({"query": query, "k": 10}).encode()
    closing = "" if keep_alive else "Connection: close\r\n"
    return (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{closing}\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection after it) of one response, its body read whole."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = head.lower()
    length = CONTENT_LENGTH.search(headers)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif b"\r\ntransfer-encoding: chunked" in headers:
        await reader.readuntil(b"0\r\n\r\n")
    else:
        raise ValueError("a response with neither content-length nor chunked encoding")
    return status, b"\r\nconnection: close" in headers


async def _send_all(port: int, queries: Sequence[str], concurrency: int, timeout_s: float,
                    keep_alive: bool = True) -> tuple[list[float], int, float]:
    """`concurrency` connections, one request in flight on each; a connection the server closes (or keep_alive
    False: every one) is opened again for the next request, inside that request's time. A minimal HTTP/1.1
    client: it shares the 2 cores with the server (aiohttp used ~0.38 ms of CPU a request)."""
    latencies, errors, cursor = [], 0, iter(queries)

    async def worker() -> None:
        nonlocal errors
        reader = writer = None
        for query in cursor:
            request = search_request(port, query, keep_alive)
            sent = time.perf_counter()
            closing = True
            try:
                async with asyncio.timeout(timeout_s):
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(request)
                    status, closing = await read_response(reader)
                ok = status == 200
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - sent) * 1000)
            else:
                errors += 1
            if (closing or not keep_alive or not ok) and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def drive_level(port: int, warmup: Sequence[str], queries: Sequence[str], concurrency: int, timeout_s: float,
                keep_alive: bool = True) -> dict:
    """Warm-up (not measured), then the measured pass; the level's figures and the cache counters around it."""
    import resource

    with contextlib.suppress(ImportError):  # the client's own event loop: uvloop when installed (BentoML's is)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if warmup:
        asyncio.run(_send_all(port, warmup, concurrency, timeout_s, keep_alive))
    before = read_cache_counts(port)
    used = resource.getrusage(resource.RUSAGE_SELF)
    latencies, errors, seconds = asyncio.run(_send_all(port, queries, concurrency, timeout_s, keep_alive))
    done = resource.getrusage(resource.RUSAGE_SELF)
    after = read_cache_counts(port)
    client_cpu_s = (done.ru_utime - used.ru_utime) + (done.ru_stime - used.ru_stime)
    return {**level_summary(latencies, errors, seconds), "seconds": round(seconds, 2),
            "cache_hit_share": hit_share(before, after), "repeat_share": round(repeat_share(queries), 4),
            "client_cpu_s": round(client_cpu_s, 2)}


def drive_in_other_process(*args) -> dict:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(drive_level, args)


# ---------------------------------------------------------------- student vs teacher

def split_queries(features: Path, split: str):
    from pipelines.data.dataset import search_requests

    requests, gains = search_requests(features, split)
    return [request.query for request in requests], gains


def compare_student(work: Path, queries: list[str], gains: list) -> dict:
    from pipelines.core.config import load_settings
    from pipelines.models.student import (
        dense_folder,
        load_query_encoder,
        load_teacher_encoder,
    )
    from pipelines.stages.distill import compare_encoders

    recall = work / "models" / "recall"
    params = load_settings(work / "params.yaml").distill
    teacher = load_teacher_encoder(dense_folder(recall), threads=1)
    student = load_query_encoder(work / "models" / "student", quantize=params.quantize, threads=1)
    return compare_encoders(teacher, student, queries, gains, np.load(dense_folder(recall) / "item_embeddings.npy"),
                            timing_queries=params.timing_queries, repeats=params.timing_repeats)


def served_ndcg(bundle: Path, teacher_dense: Path, queries: list[str], gains: list, k: int = 10) -> dict:
    """NDCG@k of the served fused ranking (engine.rank, no bandit) with the student and with the teacher
    encoder (the bundle carries no teacher weights when it has a student: the recall folder's are used)."""
    import torch

    from pipelines.core.metrics import ndcg_at_k
    from pipelines.models.student import load_teacher_encoder
    from pipelines.serving.app import load_query_encoder
    from pipelines.serving.bundle import verify
    from pipelines.serving.engine import Engine
    from pipelines.serving.params import ServingParams

    manifest = verify(bundle)
    stored = manifest["serving"]
    params = ServingParams.model_validate(stored["serving"])
    torch.set_num_threads(2)
    student, _ = load_query_encoder(bundle, params, stored["dense_max_seq_length"])
    result = {}
    for loaded, encode in (("student", student), ("teacher", load_teacher_encoder(teacher_dense, threads=1).encode)):
        engine = Engine(bundle, params, encode=lambda texts, encode=encode: encode(texts), manifest=manifest)
        started = time.perf_counter()
        scores = [ndcg_at_k(engine.rank("search", engine.search_request(query, None)).positions.tolist(), judged, k)
                  for query, judged in zip(queries, gains)]
        result[f"{loaded}_ndcg@{k}"] = round(float(np.mean(scores)), 4)
        result[f"{loaded}_seconds"] = round(time.perf_counter() - started, 1)
    teacher, student = result[f"teacher_ndcg@{k}"], result[f"student_ndcg@{k}"]
    result["ndcg_loss_pct"] = round(100 * (teacher - student) / teacher, 2) if teacher > 0 else 0.0
    return result


PROFILED = {  # where a /search request spends its time: (label, file suffix, function name)
    "bm25 (retrieve + score)": ("pipelines/rankers/bm25.py", "_scores_one"),
    "dense retrieve (query encoding + FAISS)": ("pipelines/rankers/dense.py", "retrieve"),
    "pool candidates (all components)": ("pipelines/ranking.py", "pool_candidates"),
    "score candidates (all components)": ("pipelines/ranking.py", "candidate_scores"),
    "stacking features": ("pipelines/ranking.py", "stacking_features"),
    "lightgbm predict (fusion + contributions)": ("lightgbm/basic.py", "__pred_for_np2d"),
    "engine.rank_many (everything before the answer)": ("pipelines/serving/engine.py", "rank_many"),
    "bandit order": ("pipelines/serving/online.py", "order"),
    "explanations": ("pipelines/serving/engine.py", "explanation"),
    "answer (bandit, contributions, explanations, log)": ("pipelines/serving/app.py", "_answer"),
    "app.search (whole request, no HTTP)": ("pipelines/serving/app.py", "search"),
}


def _encoder_ms(encode, queries: Sequence[str]) -> float:
    started = time.perf_counter()
    for query in queries:
        encode([query])
    return round(1000 * (time.perf_counter() - started) / len(queries), 3)


def profile_search(bundle: Path, queries: Sequence[str], work: Path) -> dict:
    """ms per request of each phase of ShopFusionApp.search (in-process, one thread, cache off, encoder
    called inline so the profiler sees it), over queries each asked once."""
    import cProfile
    import pstats
    import shutil

    from pipelines.serving.app import ShopFusionApp
    from pipelines.serving.cache import LRUCache
    from pipelines.serving.engine import EncoderAdapter

    scratch = work / "profile"
    shutil.rmtree(scratch, ignore_errors=True)  # a bandit state of another bundle would refuse to load
    app = ShopFusionApp(bundle, scratch / "state", scratch / "feedback")
    try:
        app.cache.close()
        app.cache = LRUCache(0, 1.0)  # every query ranked
        if "dense" in app.engine.components:
            app.engine.components["dense"]._encoder = EncoderAdapter(app.batcher._encode)
        for query in queries[:5]:
            app.search(f"{query} warm", 10)
        encode_ms = _encoder_ms(app.batcher._encode, queries) if app.batcher else None
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for query in queries:
            app.search(query, 10)
        profiler.disable()
        wall_ms = 1000 * (time.perf_counter() - started) / len(queries)
    finally:
        app.close()
    stats = pstats.Stats(profiler).stats
    phases = {}
    for label, (suffix, function) in PROFILED.items():
        entries = [entry[3] for (file, _, name), entry in stats.items() if file.endswith(suffix) and name == function]
        phases[label] = round(1000 * sum(entries) / len(queries), 3) if entries else None  # None: never called
    phases[f"query encoder alone ({app.encoder_kind}, timed apart, no profiler)"] = encode_ms
    return {"requests": len(queries), "wall_ms_per_request": round(wall_ms, 2), "ms_per_request": phases,
            "note": "cProfile inflates Python-heavy phases; wall_ms_per_request is with the profiler on"}


# ---------------------------------------------------------------- the run

def worker_cpu_seconds(pids: Sequence[int]) -> list[float]:
    """user + system CPU seconds of each process so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds.append((int(fields[11]) + int(fields[12])) / ticks)
        except (OSError, IndexError, ValueError):
            seconds.append(float("nan"))
    return seconds


def cpu_probe_ms(loops: int = 1_000_000, repeats: int = 3) -> float:
    """The fastest of `repeats` runs of a fixed pure-Python loop, in ms: how fast this VM's CPU is just now
    (seen here: 20-25 % slower at times, with nothing else running on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for number in range(loops):
            total += number
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 1)


def measured_pass(port: int, workers: Sequence[int], draws: Sequence[str], warmup: int, concurrency: int,
                  timeout_s: float, keep_alive: bool = True) -> dict:
    """One pass from another process, with each server worker's CPU seconds during it (how the load was shared)
    and the CPU probe just before it."""
    probe = cpu_probe_ms()
    before = worker_cpu_seconds(workers)
    figures = drive_in_other_process(port, draws[:warmup], draws[warmup:], concurrency, timeout_s, keep_alive)
    used = [round(after - start, 2) for start, after in zip(before, worker_cpu_seconds(workers))]
    return {**figures, "worker_cpu_s": used, "cpu_probe_ms": probe}


def timed_starts(work: Path, tag: str, bench: ServeBenchParams, query: str, count: int) -> list[dict]:
    """Cold starts of servers started and stopped one after another (the machine's noise shows in their spread)."""
    starts = []
    for _ in range(count):
        port = free_port()
        process = start_server(work, tag, port, bench.workers, work / "server.log")
        try:
            starts.append(wait_cold_start(process, port, time.perf_counter(), bench.ready_timeout_s, query))
        finally:
            stop_server(process)
    return starts


def median_cold_start(starts: Sequence[dict]) -> dict:
    """The median start's figures, with every start's seconds to the first /search."""
    ordered = sorted(starts, key=lambda start: start["first_search_s"])
    return {**ordered[(len(ordered) - 1) // 2], "starts_s": [start["first_search_s"] for start in starts]}


def measure(work: Path, tag: str, bench: ServeBenchParams, test_queries: list[str], fresh_queries: list[str],
            requests: int | None) -> dict:
    earlier = timed_starts(work, tag, bench, test_queries[0], bench.cold_starts - 1)
    port = free_port()
    process = start_server(work, tag, port, bench.workers, work / "server.log")
    started = time.perf_counter()
    try:
        cold = median_cold_start([*earlier, wait_cold_start(process, port, started, bench.ready_timeout_s,
                                                            test_queries[0])])
        workers = [pid for pid in _descendants(process.pid) if "worker" in _command(pid)]
        levels = {}
        for concurrency in bench.concurrency:
            count = requests or (bench.requests_single if concurrency == 1 else bench.requests)
            draws = zipf_draws(test_queries, bench.warmup + count, bench.seed + concurrency, bench.zipf_exponent)
            print(f"concurrency {concurrency}: {count} requests (+{bench.warmup} warm-up) ...", flush=True)
            levels[concurrency] = measured_pass(port, workers, draws, bench.warmup, concurrency, bench.request_timeout_s)
        count = requests or bench.requests
        distinct = distinct_draws(fresh_queries, bench.warmup + count, bench.seed)
        print(f"all-distinct queries, concurrency {bench.distinct_concurrency}: {count} requests ...", flush=True)
        distinct_pass = measured_pass(port, workers, distinct, bench.warmup, bench.distinct_concurrency,
                                      bench.request_timeout_s)
        draws = zipf_draws(test_queries, bench.warmup + count, bench.seed + 1000, bench.zipf_exponent)
        print(f"concurrency {bench.distinct_concurrency}, a new connection per request: {count} requests ...", flush=True)
        new_connections = measured_pass(port, workers, draws, bench.warmup, bench.distinct_concurrency,
                                        bench.request_timeout_s, keep_alive=False)
    finally:
        stop_server(process)
    return {"cold": cold, "levels": levels, "distinct": distinct_pass, "new_connections": new_connections,
            "port": port}


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def print_table(document: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"/search on {document['dataset']} ({document['items']:,} items), {document['workers']} workers")
    for column in ("pass", "concurrency", "p50 ms", "p95 ms", "p99 ms", "rps", "errors", "cache hits",
                   "worker CPU s", "CPU probe ms"):
        table.add_column(column, justify="right")
    rows = [("zipf queries", concurrency, figures) for concurrency, figures in document["levels"].items()]
    distinct = document["distinct_queries"]
    rows.append(("all distinct", str(distinct["concurrency"]), distinct))
    fresh = document["new_connection_per_request"]
    rows.append(("zipf, new conn.", str(fresh["concurrency"]), fresh))
    for name, concurrency, figures in rows:
        share = figures.get("cache_hit_share")
        table.add_row(name, concurrency, f"{figures['p50_ms']:.1f}", f"{figures['p95_ms']:.1f}",
                      f"{figures['p99_ms']:.1f}", f"{figures['rps']:.0f}", str(figures["errors"]),
                      "-" if share is None else f"{100 * share:.0f} %",
                      " / ".join(f"{value:.1f}" for value in figures.get("worker_cpu_s", [])),
                      str(figures.get("cpu_probe_ms", "-")))
    console = Console(width=130)
    console.print(table)
    student = document["student_vs_teacher"]
    console.print(f"cold start {document['cold_start_s']} s (ready {document['cold_start']['ready_s']} s); "
                  f"student {student['speedup']}x faster per request, dense NDCG@10 loss {student['ndcg_loss_pct']} %")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write the result here")
    parser.add_argument("--path", type=Path, default=ROOT.parent / "shared" / "datasets" / "home-depot-search-relevance")
    parser.add_argument("--work", type=Path, default=None, help="workspace (default: benchmarks/params.yaml serve.work_dir)")
    parser.add_argument("--requests", type=int, default=None, help="measured requests per level (default: params)")
    parser.add_argument("--reuse", action="store_true", help="keep stages whose outputs exist")
    parser.add_argument("--lock", default=LOCK_FILE, help="lock file held while building and measuring ('' = none)")
    parser.add_argument("--skip-served-ndcg", action="store_true", help="leave out the served fused NDCG comparison")
    parser.add_argument("--profile", type=int, default=300, help="test queries profiled in-process (0: none)")
    args = parser.parse_args(argv)

    from pipelines.bench.workspace import bench_params
    from pipelines.core.config import load_settings

    bench = bench_params("serve", ServeBenchParams)
    work = (args.work or ROOT / bench.work_dir).resolve()
    os.environ.update({**OFFLINE_ENV, "BENTOML_HOME": str(work / "bentoml")})  # before anything imports bentoml
    from pipelines.core import logs

    logs.configure(os.environ.get("SHOPFUSION_LOG_LEVEL", "WARNING"))
    settings = load_settings(bench_params_file(work, args.path.resolve(), bench))
    lock = args.lock or None
    started = time.perf_counter()
    with heavy_lock(lock):  # held from the build to the last measurement: nobody else's run in between
        built = build_workspace(work, settings, args.reuse)
        features = work / "data" / "features"
        test_queries, test_gains = split_queries(features, "test")
        fresh = [query for split in ("train", "valid") for query in split_queries(features, split)[0]]
        served = measure(work, built["bento"]["tag"], bench, test_queries, fresh, args.requests)
        student = compare_student(work, test_queries, test_gains)
        import bentoml

        bundle = Path(bentoml.models.get(built["bento"]["bundle_model"]).path)
        from pipelines.models.student import dense_folder

        fused = None if args.skip_served_ndcg else served_ndcg(
            bundle, dense_folder(work / "models" / "recall"), test_queries, test_gains)
        profile = profile_search(bundle, test_queries[:args.profile], work) if args.profile else None
    summary = json.loads((features / "summary.json").read_text(encoding="utf-8"))
    document = result_document(
        served["levels"], served["cold"]["first_search_s"],
        {"speedup": student["speedup"], "ndcg_loss_pct": student["ndcg_loss_pct"], **student,
         "served_fused": fused},
        cold_start={**served["cold"], "definition": "seconds from `bentoml serve` start to the first 200 of /readyz "
                                                    "and to the first 200 of /search (cold_start_s): the median "
                                                    f"of {bench.cold_starts} starts (starts_s)"},
        distinct_queries={"concurrency": bench.distinct_concurrency, **served["distinct"],
                          "queries": "train and valid split queries, each sent once and never before: no cache hit"},
        new_connection_per_request={"concurrency": bench.distinct_concurrency, **served["new_connections"],
                                    "queries": "Zipf test queries (seed + 1000); the client opens a connection per "
                                               "request, so an idle worker accepts it (keep-alive connections stay "
                                               "with the worker that accepted them: see worker_cpu_s)"},
        protocol={"queries": f"Home Depot test split queries ({len(test_queries)} distinct), Zipf popularity "
                             f"(exponent {bench.zipf_exponent}, seed {bench.seed} + concurrency)",
                  "client": "a minimal HTTP/1.1 client (asyncio streams, uvloop) in a spawned process, loopback, "
                            "one request in flight per connection, k=10; client_cpu_s: its CPU seconds a pass",
                  "cpu_probe_ms": "a fixed pure-Python loop timed (best of 3) before each pass: the VM's CPU "
                                  "speed then (higher = slower; noisy VMs swing 20-25 %)",
                  "warmup_requests": bench.warmup, "workers": bench.workers,
                  "finetune_max_steps": {"bi_encoder": bench.bi_encoder_max_steps,
                                         "cross_encoder": bench.cross_encoder_max_steps},
                  "recommend_components": bench.recommend_components, "search_reranker": None,
                  "dense_index": f"HNSW (text.dense.ann_threshold {bench.ann_threshold} <= items)"
                  if summary["items"] >= bench.ann_threshold else "exact (IndexFlatIP)"},
        dataset="home-depot", items=summary["items"], workers=bench.workers, bento=built["bento"]["tag"],
        offline_metrics=built["bento"]["metrics"].get("search"), stage_seconds=built["stage_seconds"],
        profile=profile,
        seconds=round(time.perf_counter() - started, 1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print_table(document)
    return document


if __name__ == "__main__":
    main()
