"""Off-policy estimates from the service's own log (serving/feedback_log.py): what the served lists
earned, and what the plain fused order would have earned, by IPS and SNIPS over the logged per-slot
propensities. The fused rank of each served item is read back from its bandit features (the last one
is 1 / (1 + fused rank), see policies.build_context), so the fused order needs no extra logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.feedback import RewardParams
from pipelines.feedback.log import EVENTS, SERVED, read_rows
from pipelines.feedback.ope import Estimate, _normal, ips, snips
from pipelines.feedback.policies import slot_rewards


@dataclass
class LoggedSlates:
    rewards: np.ndarray  # [lists, slots]
    propensities: np.ndarray  # logging policy's P(that item at that slot); 1 for padding
    fused_ranks: np.ndarray  # fused rank of the item served at each slot; -1 for padding

    def __len__(self) -> int:
        return len(self.rewards)


def logged_slates(folder: Path, rewards: RewardParams, task: str | None = None) -> LoggedSlates:
    """The served lists that carried bandit slots, with their per-slot rewards from events.jsonl."""
    served, _ = read_rows(Path(folder) / SERVED)
    events, _ = read_rows(Path(folder) / EVENTS)
    served = [row for row in served if row.get("slate_features") and (task is None or row.get("task") == task)]
    width = max((len(row["slate_features"]) for row in served), default=0)
    by_request: dict[str, list] = {}
    for event in events:
        by_request.setdefault(event["request_id"], []).append(event)
    reward_rows, propensity_rows, rank_rows = [], [], []
    for row in served:
        slots = len(row["slate_features"])
        items = row["items"][:slots]
        hits = [(items.index(e["item_id"]), e["event_type"]) for e in by_request.get(row["request_id"], [])
                if e["item_id"] in items]
        reward_rows.append(np.pad(slot_rewards(slots, hits, rewards), (0, width - slots)))
        propensity_rows.append(np.pad(np.asarray(row["propensities"][:slots], float), (0, width - slots),
                                      constant_values=1.0))
        ranks = [int(round(1.0 / features[-1] - 1.0)) for features in row["slate_features"]]
        rank_rows.append(np.pad(np.asarray(ranks), (0, width - slots), constant_values=-1))
    shape = (len(served), width)
    stack = lambda rows, dtype: np.vstack(rows).astype(dtype) if rows else np.zeros(shape, dtype)  # noqa: E731
    return LoggedSlates(stack(reward_rows, float), stack(propensity_rows, float), stack(rank_rows, int))


def estimate_logged(folder: Path, rewards: RewardParams, task: str | None = None, level: float = 0.95) -> dict:
    """The logged policy's value per list (on-policy mean) and the fused order's (IPS, SNIPS)."""
    slates = logged_slates(folder, rewards, task)
    if len(slates) < 2:
        return {"lists": len(slates)}
    per_list = slates.rewards.sum(axis=1)
    logged = _normal(per_list.mean(), per_list.std(ddof=1) / np.sqrt(len(per_list)), level)
    slots = np.arange(slates.rewards.shape[1])
    fused_target = (slates.fused_ranks == slots[None, :]).astype(float)
    as_dict = lambda estimate: {"value": round(estimate.value, 5), "ci": [round(estimate.low, 5), round(estimate.high, 5)]}  # noqa: E731
    return {
        "lists": len(slates), "slots": int(slates.rewards.shape[1]),
        "logged_policy": as_dict(logged),
        "fused_order": {"ips": as_dict(ips(slates.rewards, fused_target, slates.propensities, level)),
                        "snips": as_dict(snips(slates.rewards, fused_target, slates.propensities, level))},
    }


__all__ = ["Estimate", "LoggedSlates", "estimate_logged", "logged_slates"]
