"""11. Pipeline. A trigger's overrides outside the allow-listed model and data sections (serving.public_paths,
promotion.tolerance, anything not a params key path) are refused with one line; allowed ones pass. Promote and
rollback calls from many processes at once, each with a slow store check (the window between reading and
writing the registry), lose no decision. The PII key file is 0600 from its creation, whatever the umask."""

from __future__ import annotations

import json
import os
import stat
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipelines.bench.faults import Fault, FaultContext
from pipelines.core.errors import DataError
from pipelines.core.params import PrivacyParams, PromotionParams
from pipelines.core.privacy import load_key
from pipelines.orchestration.dvc_dag import normalize_overrides
from pipelines.stages import promote as promotion

REFUSED = ["serving.public_paths", "serving.limits.rate_per_second", "promotion.tolerance", "promotion.registry",
           "privacy.key_file", "sample.n_users;touch /tmp/x", "../params", "__class__"]
ALLOWED = ["sample.n_users", "fusion.folds", "sasrec.hidden"]
PROCESSES = 4
CALLS = 24           # promotes and rollbacks, interleaved, from PROCESSES processes
STORE_SECONDS = 0.05  # the store check's time: long enough that unlocked calls would overlap


def _overrides(fault: Fault) -> None:
    refused_lines = {}
    for key in REFUSED:
        try:
            normalize_overrides({key: 1})
        except DataError as exc:
            refused_lines[key] = str(exc)
    passed = normalize_overrides(json.dumps({key: 1 for key in ALLOWED}))
    fault.requests += len(REFUSED) + 1
    fault.figures["refused_overrides"] = refused_lines
    fault.check("overrides outside the allow-list refused", set(refused_lines) == set(REFUSED))
    fault.check("each refusal is one line naming the key", all(
        "\n" not in line and repr(key) in line for key, line in refused_lines.items()))
    fault.check("allow-listed overrides pass", set(passed) == set(ALLOWED))


def _slow_store(deployment) -> str:
    time.sleep(STORE_SECONDS)
    return "present"


def _bento_info(folder: Path, number: int) -> Path:
    path = folder / f"bento-{number}.json"
    metrics = {"search": {"lambdarank": {"kind": "fusion", "ndcg@10": 0.5 + number / 1000}}}
    path.write_text(json.dumps({"tag": f"shopfusion:v{number}", "version": f"v{number}", "metrics": metrics}))
    return path


def _call(args: tuple) -> str:
    """One promote (number >= 0) or rollback (number < 0) in a process of its own: its outcome."""
    number, folder, params = args
    try:
        if number >= 0:
            return promotion.promote(_bento_info(Path(folder), number), params, _slow_store)["outcome"]
        return promotion.rollback(params, _slow_store)["outcome"]
    except DataError as exc:  # a refused rollback (no history yet) is a decision too
        return type(exc).__name__


def _concurrent_promotions(context: FaultContext, fault: Fault) -> None:
    folder = context.folder("pipeline_registry")
    params = PromotionParams(registry=str(folder / "deployments.json"), bento_info=str(folder / "bento.json"),
                             metrics=["search.lambdarank.ndcg@10"], tolerance=1.0)
    calls = [(number if number % 3 else -number - 1, str(folder), params) for number in range(CALLS)]
    with ProcessPoolExecutor(PROCESSES) as pool:
        outcomes = list(pool.map(_call, calls))
    registry = promotion.load_registry(Path(params.registry))
    recorded = len(registry.decisions)
    fault.requests += len(calls)
    fault.acknowledged, fault.present = len(calls), recorded
    fault.figures.update(promotion_outcomes=sorted(set(outcomes)), decisions_recorded=recorded)
    fault.check("concurrent promotes and rollbacks lose no decision", recorded == len(calls))


def _key_file_mode(context: FaultContext, fault: Fault) -> None:
    folder = context.folder("pipeline_keys")
    previous = os.umask(0o000)  # the most permissive umask: only the mode given at creation protects the key
    try:
        load_key(PrivacyParams(key_env="SHOPFUSION_FAULTS_UNSET_KEY", key_file=str(folder / "pii.key")))
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((folder / "pii.key").stat().st_mode)
    fault.figures["pii_key_mode"] = oct(mode)
    fault.check("the PII key file is 0600 from its creation", mode == 0o600)


def run(context: FaultContext) -> Fault:
    fault = Fault()
    _overrides(fault)
    _concurrent_promotions(context, fault)
    _key_file_mode(context, fault)
    return fault
