"""5. PII canaries: emails (ASCII and not), UK, French and German phone numbers and a card number, typed into
search queries, user ids and event fields of HTTP calls (valid, rejected with 422, refused with 401) and into
the raw files of a shop run through validate and clean. None may appear in a log line (the service's, and the
stages' output, which is what an Airflow task log holds), a cache key or value (cache.sqlite, Redis), the
metrics page, the feedback logs, a Data Docs page or any artifact after clean. Cache keys must be keyed hashes,
and a caller passing another user's pseudonym must not read that user's history."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
import sys
from pathlib import Path

import httpx
import pandas as pd

from pipelines.bench.faults import Fault, FaultContext
from pipelines.bench.served import RedisServer, Server
from pipelines.bench.workspace import write_params
from pipelines.core.config import PARAMS_ENV

CANARIES = {
    "email": "canary.shopper@example.com",
    "email_non_ascii": "jörg.müller@exämple.de",
    "phone_uk": "+44 20 7946 0958",
    "phone_fr": "+33 6 12 34 56 78",
    "phone_de": "+49 30 90182345",
    "card": "4111 1111 1111 1111",
}
CACHE_KEY = re.compile(r"^[^|]+\|[a-z]+\|[0-9a-f]{40}$")  # app.cache_key: version|task|keyed hash


def canary_forms() -> dict[str, str]:
    """Each canary as typed, its local part (emails) and its digits alone (phones, cards): a leak of any form."""
    forms = {}
    for name, value in CANARIES.items():
        forms[value] = name
        if "@" in value:
            forms[value.split("@")[0]] = name
        else:
            forms[re.sub(r"\D", "", value)] = name
    return forms


def file_texts(path: Path) -> list[str]:
    """What a file holds as text: a parquet file's cells, column by column; any other file's bytes."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        return ["\n".join(frame[column].dropna().astype(str)) for column in frame.columns]
    return [path.read_bytes().decode("utf-8", errors="replace")]


def leaks(texts: dict[str, str]) -> list[str]:
    """'where: canary' for every canary form found in the named texts."""
    forms = canary_forms()
    return [f"{where}: {forms[form]}" for where, text in texts.items() for form in forms if form in text]


def folder_texts(*folders: Path) -> dict[str, str]:
    return {str(path): "\n".join(file_texts(path)) for folder in folders if folder.exists()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------- the service
def _calls(server: Server, fault: Fault) -> dict:
    """Every endpoint with the canaries in every field a caller controls; the statuses seen."""
    statuses = {}
    with httpx.Client(timeout=30, headers=server.headers) as http:
        def post(name: str, path: str, body: dict, **kwargs) -> httpx.Response:
            reply = http.post(server.url + path, json=body, **kwargs)
            statuses[name] = reply.status_code
            fault.requests += 1
            fault.errors += reply.status_code >= 500
            return reply

        for name, canary in CANARIES.items():
            answer = post(f"search {name}", "/search", {"query": f"garden hose {canary}", "k": 5,
                                                        "user_id": CANARIES["email"]})
            post(f"recommend {name}", "/recommend", {"user_id": canary, "k": 5})
            if answer.status_code == 200 and answer.json()["items"]:
                post(f"feedback {name}", "/feedback", {"request_id": answer.json()["request_id"], "user_id": canary,
                                                       "item_id": answer.json()["items"][0]["item_id"],
                                                       "event_type": "click"})
            post(f"422 {name}", "/search", {"query": canary, "k": canary, "user_id": {"id": canary}})
            post(f"422 filters {name}", "/search", {"query": "hose", "filters": {canary: 1, "price_max": canary}})
            post(f"401 {name}", "/search", {"query": "hose"}, headers={"Authorization": f"Bearer {canary}".encode("utf-8")})
            statuses[f"unknown path {name}"] = http.get(f"{server.url}/users/{canary}", headers={"Authorization": ""}).status_code
            fault.requests += 1
    return statuses


def _pseudonym_reads_nothing(server: Server, bundle: Path) -> bool:
    histories = pd.read_parquet(bundle / "histories.parquet")
    someone = str(histories.loc[histories["items"].map(len).idxmax(), "user"])
    answer = httpx.post(server.url + "/recommend", headers=server.headers, json={"user_id": someone, "k": 5}, timeout=30)
    return answer.status_code == 200 and answer.json()["fallback"] is not None


def _redis_value(client, key: str) -> str:
    """A key's whole value as text, whatever its type (the cache's strings, the stream, the live state's hashes
    and sorted sets): read through its own command, never DUMP, whose compression could hide a canary."""
    kind = client.type(key).decode()
    readers = {"string": lambda: [client.get(key)], "hash": lambda: [*client.hgetall(key).items()],
               "zset": lambda: client.zrange(key, 0, -1), "list": lambda: client.lrange(key, 0, -1),
               "set": lambda: list(client.smembers(key)),
               "stream": lambda: [entry for _, fields in client.xrange(key) for entry in fields.items()]}
    return repr(readers.get(kind, lambda: [])())


def _redis_texts(redis_url: str) -> tuple[dict[str, str], list[str]]:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [key.decode("utf-8", errors="replace") for key in client.keys("*")]
    values = {f"redis value {key}": _redis_value(client, key) for key in keys}
    client.close()
    return {"redis keys": "\n".join(keys), **values}, keys


def _service(context: FaultContext, fault: Fault) -> None:
    texts, statuses = {}, {}
    with RedisServer() as redis_server:
        for tier, env in (("sqlite", {}), ("redis", {"SHOPFUSION_REDIS_URL": redis_server.url})):
            state = context.folder(f"pii_{tier}")
            with Server(context.bundle, state, workers=context.params.workers, extra_env=env) as server:
                statuses.update({f"{tier} {name}": status for name, status in _calls(server, fault).items()})
                texts[f"{tier} metrics page"] = server.metrics()
                if tier == "redis":
                    fault.check("another user's pseudonym reads no history", _pseudonym_reads_nothing(server, context.bundle))
            texts[f"{tier} service log"] = server.output()
            texts.update(folder_texts(state / "serving", state / "feedback"))
        redis_texts, keys = _redis_texts(redis_server.url)
        texts.update(redis_texts)
    prefix = "shopfusion:"
    cache_keys = [key for key in keys if CACHE_KEY.match(key.removeprefix(prefix)) or "|" in key]
    fault.figures.update(service_statuses=dict(Counter(statuses.values())), redis_keys=len(keys),
                         redis_cache_keys=len(cache_keys))
    fault.check("every call answered (200, 401, 404 or 422)", set(statuses.values()) <= {200, 401, 404, 422})
    fault.check("Redis cache keys are keyed hashes", bool(cache_keys) and all(
        CACHE_KEY.match(key.removeprefix(prefix)) for key in cache_keys))
    found = leaks(texts)
    fault.figures["service_leaks"] = found
    fault.check("no canary in service logs, caches, Redis, metrics or feedback logs", not found)


# ---------------------------------------------------------------- the pipeline
def _plant_canaries(raw: Path) -> int:
    """Canaries in the raw queries' text and user ids and in the events' user and session ids, and one event row
    that validation quarantines (its timestamp is not a time). Returns the rows changed."""
    # the sample's realistic defects include bytes that are not UTF-8: kept as they are
    read = {"dtype": str, "keep_default_na": False, "encoding_errors": "surrogateescape"}
    queries, events = pd.read_csv(raw / "queries.csv", **read), pd.read_csv(raw / "events.csv", **read)
    for row, (name, canary) in enumerate(CANARIES.items()):
        queries.loc[row, "query"] = f"{queries.loc[row, 'query']} call me {canary}"
        queries.loc[row + len(CANARIES), "user_id"] = canary
        events.loc[row, "user_id"] = canary
        events.loc[row + len(CANARIES), "session_id"] = canary
    quarantined = events.iloc[[0]].assign(timestamp="not a time", user_id=CANARIES["email_non_ascii"])
    pd.concat([events, quarantined]).to_csv(raw / "events.csv", index=False, errors="surrogateescape")
    queries.to_csv(raw / "queries.csv", index=False, errors="surrogateescape")
    return 4 * len(CANARIES) + 1


def _stage(command: list[str], params: Path, cwd: Path) -> subprocess.CompletedProcess:
    """A stage as dvc.yaml and the Airflow DAG run it: its output is what the task log holds."""
    env = {**os.environ, PARAMS_ENV: str(params)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *command], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _pipeline(context: FaultContext, fault: Fault) -> None:
    work = context.folder("pii_pipeline")
    params = write_params(work, {"ingest.source": "sample", **context.params.pipeline})
    runs = [_stage(["ingest", "--out", "data/raw"], params, work)]
    planted = _plant_canaries(work / "data" / "raw")
    in_raw = {found.rsplit(": ", 1)[1] for found in leaks(folder_texts(work / "data" / "raw"))}
    fault.check("every canary planted in the raw files (the scan finds them there)", in_raw == set(CANARIES))
    runs.append(_stage(["validate", "--raw", "data/raw", "--out", "data/validated", "--metrics",
                        "metrics/validate.json"], params, work))
    runs.append(_stage(["clean", "--valid", "data/validated/valid", "--out", "data/clean", "--metrics",
                        "metrics/clean.json"], params, work))
    fault.figures["pipeline_exit_codes"] = [run.returncode for run in runs]
    fault.check("ingest, validate and clean ran", all(run.returncode == 0 for run in runs))
    texts = {f"stage output {number}": run.stdout + run.stderr for number, run in enumerate(runs[1:])}
    texts.update(folder_texts(work / "data" / "validated" / "gx", work / "data" / "clean", work / "metrics"))
    texts["validation report"] = (work / "data" / "validated" / "report.json").read_text(encoding="utf-8")
    found = leaks(texts)
    fault.figures.update(pipeline_rows_planted=planted, pipeline_leaks=found,
                         data_docs_pages=sum(1 for _ in (work / "data" / "validated" / "gx").rglob("*.html")))
    fault.check("no canary in stage logs, Data Docs, reports or artifacts after clean", not found)
    fault.check("the Data Docs were built and scanned", fault.figures["data_docs_pages"] > 0)


def run(context: FaultContext) -> Fault:
    fault = Fault()
    _service(context, fault)
    _pipeline(context, fault)
    fault.check("no 5xx", fault.errors == 0)
    return fault
