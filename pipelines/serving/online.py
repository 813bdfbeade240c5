"""The bandit re-ranker online: orders the fused top-M of each served list and learns from /feedback.

Learning reads the durable feedback log (feedback_log.py), not the request that happened to reach this
worker: every worker tails served.jsonl and events.jsonl, so all workers learn from every list and
every click, and a worker that restarts resumes from the log offsets saved with its policy (state and
offsets are written together, atomically: nothing is lost or counted twice). A served list's rewards
count once it is `settle_seconds` old (slots without an event get 0). Until a policy has
`warmup_updates` updates the fused order itself is served, with the same bounded exploration, so the
logged propensities stay valid for off-policy evaluation from the first request.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.feedback import FeedbackParams
from pipelines.feedback.log import EVENTS, SERVED, make_durable, read_rows
from pipelines.feedback.policies import (
    FORMAT_VERSION,
    Slate,
    SlateContext,
    StaticFusion,
    atomic_write_text,
    build_context,
    make_policy,
    policy_from_state,
    slot_rewards,
)
from pipelines.serving.params import BanditParams

log = get_logger(__name__)


@dataclass
class Served:
    """How one list was ordered: indices into the fused list, per-slot propensities, bandit features."""

    order: np.ndarray
    propensities: np.ndarray
    slate_features: list[list[float]]
    policy: str
    context: SlateContext | None = None  # the features the policy read (a cached list reuses them)


class OnlineBandit:
    def __init__(self, state_path: Path, log_dir: Path, params: BanditParams, feedback: FeedbackParams,
                 dimensions: dict[str, int], clock=time.time):
        self.state_path, self.log_dir = Path(state_path), Path(log_dir)
        self.params, self.feedback, self.clock = params, feedback, clock
        self.policies = {task: make_policy(params.policy, dimension, feedback.exploration, feedback.policy)
                         for task, dimension in dimensions.items()}
        self.warmup = {task: StaticFusion(dimension, feedback.exploration, feedback.policy,
                                          epsilon=feedback.exploration.epsilon) for task, dimension in dimensions.items()}
        self.offsets = {SERVED: 0, EVENTS: 0}
        self.skipped_lines = {SERVED: 0, EVENTS: 0}  # damaged log lines passed over (the service's metric reads them)
        self.on_skipped = None  # optional (file name) -> None, called for each one
        self.pending: dict[str, dict] = {}
        self.last_save = clock()
        self._lock = threading.Lock()
        if self.state_path.exists():
            self._restore()

    # ---------------------------------------------------------------- serving
    def order(self, task: str, fused: np.ndarray, component_scores: dict[str, np.ndarray],
              context: SlateContext | None = None) -> Served:
        """context: what an earlier order of this same list returned (Served.context), not built again."""
        size = len(fused)
        if size < 2 or task not in self.policies:
            return Served(np.arange(size), np.ones(size), [], "fused")
        if context is None:
            context = build_context(np.arange(size), fused, component_scores)
        top_m = self.feedback.exploration.top_m
        if len(context) > top_m:  # only the fused top-M may be served: the rest is neither scored nor logged
            context = SlateContext(context.items[:top_m], context.fused[:top_m], context.features[:top_m])
        with self._lock:
            learned = self.policies[task]
            policy = learned if learned.n_updates >= self.params.warmup_updates else self.warmup[task]
            slate = policy.rank(context)
        head = np.asarray(slate.items, dtype=np.int64)
        rest = np.ones(size, dtype=bool)
        rest[head] = False
        propensities = np.concatenate([slate.propensities, np.ones(size - len(head))])
        return Served(np.concatenate([head, np.flatnonzero(rest)]), propensities,
                      [context.logged_features[index] for index in slate.candidates.tolist()], policy.kind, context)

    # ---------------------------------------------------------------- learning
    def poll(self) -> int:
        """Read new log rows, settle what is old enough; returns the number of policy updates made."""
        with self._lock:
            served, self.offsets[SERVED] = read_rows(self.log_dir / SERVED, self.offsets[SERVED], self._skipped)
            events, self.offsets[EVENTS] = read_rows(self.log_dir / EVENTS, self.offsets[EVENTS], self._skipped)
            for row in served:
                if row.get("slate_features") and row.get("task") in self.policies:
                    self.pending[row["request_id"]] = {"task": row["task"], "timestamp": row["timestamp"],
                                                       "items": row["items"][:len(row["slate_features"])],
                                                       "features": row["slate_features"], "events": []}
            for event in events:
                entry = self.pending.get(event.get("request_id"))
                if entry is not None and event.get("item_id") in entry["items"]:
                    entry["events"].append([entry["items"].index(event["item_id"]), event.get("event_type")])
            updates = self._settle(self.clock() - self.params.settle_seconds)
        if updates and self._save_due():
            self.save()
        return updates

    def _skipped(self, path: Path, offset: int, reason: str) -> None:
        self.skipped_lines[path.name] = self.skipped_lines.get(path.name, 0) + 1
        if self.on_skipped is not None:
            self.on_skipped(path.name)

    def _settle(self, before: float) -> int:
        ready = [request for request, entry in self.pending.items() if entry["timestamp"] <= before]
        for request in ready:
            entry = self.pending.pop(request)
            features = np.asarray(entry["features"], dtype=np.float64)
            slots = np.arange(len(features))
            rewards = slot_rewards(len(features), [tuple(event) for event in entry["events"]], self.feedback.rewards)
            context = SlateContext(slots, np.zeros(len(features)), features)
            self.policies[entry["task"]].update(context, Slate(slots, slots, np.ones(len(features))), rewards)
        return len(ready)

    def _save_due(self) -> bool:
        return self.clock() - self.last_save >= self.params.save_seconds

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict:
        return {"format": FORMAT_VERSION, "policies": {task: p.state() for task, p in self.policies.items()},
                "offsets": self.offsets, "pending": self.pending}

    def save(self) -> None:
        for name in (SERVED, EVENTS):  # the saved offsets must not point past data a power loss would take
            make_durable(self.log_dir / name)
        with self._lock:
            text = json.dumps(self.state())
            self.last_save = self.clock()
        atomic_write_text(self.state_path, text)
        log.info("bandit state saved", extra={"path": str(self.state_path),
                                              "updates": {t: p.n_updates for t, p in self.policies.items()}})

    def _restore(self) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            policies = {task: policy_from_state(saved, str(self.state_path)) for task, saved in state["policies"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.state_path}: unreadable bandit state ({exc})") from None
        for task, policy in policies.items():
            if task in self.policies and policy.dimension != self.policies[task].dimension:
                raise DataError(f"{self.state_path}: {task} policy has {policy.dimension} features, "
                                f"the model has {self.policies[task].dimension} (delete the state to start over)")
        self.policies.update(policies)
        self.offsets = {SERVED: int(state["offsets"][SERVED]), EVENTS: int(state["offsets"][EVENTS])}
        self.pending = state.get("pending", {})
        log.info("bandit state restored", extra={"path": str(self.state_path),
                                                 "updates": {t: p.n_updates for t, p in self.policies.items()}})


class Poller:
    """Calls bandit.poll every `seconds` on a daemon thread; stop() saves the state."""

    def __init__(self, bandit: OnlineBandit, seconds: float):
        self.bandit, self.seconds = bandit, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bandit-poller", daemon=True)

    def start(self) -> "Poller":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.bandit.poll()
            except Exception:  # a bad log line must not kill learning for good; it is logged
                log.exception("bandit poll failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.bandit.poll()
        self.bandit.save()
