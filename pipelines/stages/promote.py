"""Promotion gate and rollback: which bento is current, and why.

The `package` stage writes `bentos/bento.json` (tag, version, revision, created, bento_file and the
run's whole metrics/evaluate.json). `promote` holds that candidate against the current deployment:
it becomes current only when every gate metric (params `promotion.metrics`, dotted paths into the
metrics such as `search.lambdarank.ndcg@10`) is at least the current one's minus
`promotion.tolerance` (absolute); a metric of a task the evaluate stage skipped (no requests) is not
compared when the current deployment lacks it too, and fails the gate when the current one has it.
The gate itself (`gate`) is pure. `rollback` makes the previous current the current one again.

The registry (`promotion.registry`, default `.shopfusion/deployments.json`, git-ignored) holds
{"current": deployment | null, "history": [former currents, newest last], "decisions": [every
promote and rollback with its outcome and reasons]}; it is rewritten atomically. BentoML is imported
only when a tag has to be found in or imported into the local store, so reading the registry stays light.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.core.atomic import atomic_write_text, file_lock
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.params import PromotionParams

log = get_logger(__name__)


class Refused(DataError):
    """A promote or rollback that leaves the current deployment as it was: exit code 1, one line."""

    exit_code = 1


class Deployment(BaseModel):
    """One bento as the registry records it (bento.json's fields plus when it became current)."""

    model_config = ConfigDict(extra="allow")

    tag: str
    metrics: dict
    version: str | None = None
    revision: str | None = None
    created: str | None = None
    bento_file: str | None = None
    promoted_at: str | None = None


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: Deployment | None = None
    history: list[Deployment] = []
    decisions: list[dict] = []


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]        # one line per gate metric
    failures: tuple[str, ...] = ()  # the lines of the metrics that failed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def metric_value(metrics: dict, dotted: str) -> float | None:
    """The number at a dotted path (`search.lambdarank.ndcg@10`); None when absent or not a number."""
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def skipped_task(metrics: dict, dotted: str) -> str | None:
    """The evaluate stage's reason when it skipped the task of a dotted path (`{"requests": 0, "skipped": ...}`)."""
    entry = metrics.get(dotted.split(".", 1)[0]) if isinstance(metrics, dict) else None
    reason = entry.get("skipped") if isinstance(entry, dict) else None
    return str(reason) if reason else None


def gate(candidate: dict, current: dict | None, gate_metrics: list[str], tolerance: float) -> GateResult:
    """Pass when there is no current metrics dict, or every gate metric is >= current - tolerance.

    A gate metric the candidate lacks fails the gate, except when the evaluate stage skipped its task
    (no requests: e.g. no recommend task in a shop without behaviour events) and the current deployment
    has no value either: nothing to compare, nothing lost, reported with the reason. One only the
    current lacks is not compared (the gate list changed since it was promoted) and says so.
    """
    if current is None:
        return GateResult(True, ("no current deployment",))
    reasons, failures = [], []
    for name in gate_metrics:
        new, old = metric_value(candidate, name), metric_value(current, name)
        skipped = skipped_task(candidate, name)
        if new is None and old is None and skipped:
            reasons.append(f"{name}: not compared, neither the candidate nor the current deployment has it "
                           f"(candidate skipped {name.split('.', 1)[0]}: {skipped})")
        elif new is None:
            failures.append(f"{name}: missing from the candidate's metrics"
                            + (f" (skipped {name.split('.', 1)[0]}: {skipped})" if skipped else "")
                            + ("" if old is None else f", current has {old:.5f}"))
        elif old is None:
            reasons.append(f"{name}: candidate {new:.5f}, current has no value (not compared)")
        elif new >= old - tolerance:
            reasons.append(f"{name}: candidate {new:.5f} >= current {old:.5f} - tolerance {tolerance:g}")
        else:
            failures.append(f"{name}: candidate {new:.5f} < current {old:.5f} - tolerance {tolerance:g}")
    return GateResult(not failures, tuple(reasons + failures), tuple(failures))


def load_registry(path: Path) -> Registry:
    """The registry; a missing file is an empty one, an unreadable one a DataError naming it."""
    path = Path(path)
    if not path.exists():
        return Registry()
    try:
        return Registry.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable deployments registry ({exc.__class__.__name__}); "
                        "fix or remove it (the bentos stay in the BentoML store)") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise DataError(f"{path}: not a deployments registry: field {field}: {first['msg']}") from None


def save_registry(path: Path, registry: Registry) -> None:
    """Written beside, then renamed: a crash never leaves half a registry."""
    atomic_write_text(Path(path), registry.model_dump_json(indent=2) + "\n")


def read_bento_info(path: Path) -> Deployment:
    """The candidate as the package stage described it in bento.json."""
    path = Path(path)
    try:
        return Deployment.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (run the package stage first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc.__class__.__name__})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DataError(f"{path}: field {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


_MAGIC = ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"PK\x03\x04", "zip"))


def archive_format(archive: Path) -> str:
    """The exported bento's real format from its first bytes (a `.bento` may be plain tar or xz)."""
    with open(archive, "rb") as stream:
        head = stream.read(262)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    raise DataError(f"{archive}: not a bento archive (neither tar, xz, gzip, bzip2 nor zip)")


def ensure_in_store(deployment: Deployment) -> str:
    """Make `bentoml serve <tag>` work: import the exported archive when the tag is not in the local store."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        bentoml.get(deployment.tag)
        return "present"
    except NotFound:
        pass
    archive = Path(deployment.bento_file or "")
    if not deployment.bento_file or not archive.is_file():
        raise DataError(f"{deployment.tag}: not in the BentoML store and its archive "
                        f"{deployment.bento_file or '(none recorded)'} does not exist")
    try:  # BentoML misreads relative paths, and guesses the compression from the extension only
        imported = bentoml.import_bento(str(archive.resolve()), archive_format(archive))
    except (OSError, BentoMLException) as exc:
        raise DataError(f"{archive}: cannot import into the BentoML store ({exc})") from None
    if str(imported.tag) != deployment.tag:
        raise DataError(f"{archive}: holds {imported.tag}, not {deployment.tag}")
    return "imported"


StoreCheck = Callable[[Deployment], str]


def _decision(action: str, outcome: str, tag: str | None, reasons, **extra) -> dict:
    return {"at": _now(), "action": action, "outcome": outcome, "tag": tag, "reasons": list(reasons), **extra}


def _record(registry_path: Path, registry: Registry, decision: dict) -> dict:
    registry.decisions.append(decision)
    save_registry(registry_path, registry)
    log.info(f"{decision['action']} {decision['outcome']}",
             extra={"tag": decision["tag"], "reasons": decision["reasons"]})
    return decision


def promote(info_path: Path, params: PromotionParams, store: StoreCheck = ensure_in_store) -> dict:
    """Gate the candidate of `info_path`; on a pass it becomes current. Raises Refused when it fails.
    Holds the registry's lock throughout: a concurrent promote or rollback waits, so neither is lost."""
    with file_lock(Path(params.registry)):
        return _promote(info_path, params, store)


def _promote(info_path: Path, params: PromotionParams, store: StoreCheck) -> dict:
    registry_path = Path(params.registry)
    registry = load_registry(registry_path)  # before anything else: a corrupt registry changes nothing
    candidate = read_bento_info(info_path)
    current = registry.current
    if current is not None and current.tag == candidate.tag:
        return _record(registry_path, registry,
                       _decision("promote", "already_current", candidate.tag, ["the candidate is the current bento"]))
    result = gate(candidate.metrics, current.metrics if current else None, params.metrics, params.tolerance)
    previous = current.tag if current else None
    if not result.passed:
        decision = _record(registry_path, registry, _decision("promote", "rejected", candidate.tag, result.reasons,
                                                              current=previous))
        raise Refused(f"promotion rejected: {previous} stays current, {candidate.tag} is not promoted: "
                      + "; ".join(result.failures),
                      details=decision)
    store_state = store(candidate)
    if current is not None:
        registry.history.append(current)
    registry.current = candidate.model_copy(update={"promoted_at": _now()})
    return _record(registry_path, registry, _decision("promote", "promoted", candidate.tag, result.reasons,
                                                      previous=previous, store=store_state))


def rollback(params: PromotionParams, store: StoreCheck = ensure_in_store) -> dict:
    """The newest former current becomes current again; the rolled-back one leaves the history (under the
    registry's lock, as promote)."""
    with file_lock(Path(params.registry)):
        return _rollback(params, store)


def _rollback(params: PromotionParams, store: StoreCheck) -> dict:
    registry_path = Path(params.registry)
    registry = load_registry(registry_path)
    if not registry.history:
        current = registry.current.tag if registry.current else None
        _record(registry_path, registry, _decision("rollback", "refused", current, ["no previous deployment"]))
        raise Refused(f"nothing to roll back to: {registry_path} has no previous deployment "
                      f"(current: {current or 'none'})")
    previous = registry.history[-1]
    store_state = store(previous)
    registry.history.pop()
    rolled_back = registry.current.tag if registry.current else None
    registry.current = previous.model_copy(update={"promoted_at": _now()})
    return _record(registry_path, registry, _decision("rollback", "rolled_back", previous.tag,
                                                      [f"{rolled_back} rolled back"], previous=rolled_back,
                                                      store=store_state))


def deployments(params: PromotionParams, decisions: int = 5) -> dict:
    """Current, history (newest last) and the latest decisions, for `shopfusion deployments`."""
    registry = load_registry(Path(params.registry))
    summary = registry.model_dump(mode="json")
    summary["decisions"] = summary["decisions"][-decisions:] if decisions else []
    return summary


def current_tag(params: PromotionParams) -> str:
    registry_path = Path(params.registry)
    current = load_registry(registry_path).current
    if current is None:
        raise Refused(f"no current deployment in {registry_path}: run `shopfusion promote` first")
    return current.tag
