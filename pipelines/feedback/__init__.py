"""Learning from feedback, offline core: bandit re-rankers, off-policy estimators, a click simulator.

The service imports these as plain functions and classes; nothing here needs it. Everything tunable
is the `feedback:` section of params.yaml, typed by `FeedbackParams` (pipelines/core/params.py).
"""

from __future__ import annotations

from pipelines.core.params import (
    ExplorationParams,
    FeedbackParams,
    PolicyParams,
    ReinforceParams,
    RewardParams,
    SimulatorParams,
)

__all__ = ["ExplorationParams", "FeedbackParams", "PolicyParams", "ReinforceParams", "RewardParams",
           "SimulatorParams"]
