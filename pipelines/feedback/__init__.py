"""Learning from feedback, offline core: bandit re-rankers, off-policy estimators, a click simulator.

The service imports these as plain functions and classes; nothing here needs it. Everything tunable
is the `feedback:` section of params.yaml, typed by `FeedbackParams`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipelines.core.config import Settings, section


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RewardParams(_Section):
    """A served slot's reward: the sum of the weights of the events it got (a purchase follows a cart and a click)."""

    click: float = 1.0
    add_to_cart: float = 1.0
    purchase: float = 2.0


class ExplorationParams(_Section):
    slate_size: int = Field(10, ge=1)  # slots served
    top_m: int = Field(20, ge=1)  # only the fused top-M may be served
    max_shift: int = Field(3, ge=0)  # no item moves more than this many slots away from its fused rank
    epsilon: float = Field(0.05, ge=0.0, le=1.0)  # slate-level: share of slates built by uniform exploration


class PolicyParams(_Section):
    ridge: float = Field(1.0, gt=0)  # prior precision of the linear reward model
    alpha: float = Field(0.5, ge=0)  # LinUCB bonus width
    thompson_scale: float = Field(0.5, gt=0)  # posterior standard deviation multiplier
    thompson_samples: int = Field(200, ge=10)  # Monte Carlo draws for Thompson propensities
    greedy_epsilon: float = Field(0.1, ge=0.0, le=1.0)  # exploration of the epsilon-greedy baseline
    # approximate examination of slot s: known position bias the linear model divides out
    position_bias: float = Field(1.0, ge=0)  # weight of slot s = 1 / (1 + s) ** position_bias
    save_every_updates: int = Field(500, ge=1)
    save_every_seconds: float = Field(60.0, gt=0)


class SimulatorParams(_Section):
    candidates: int = Field(30, ge=2)  # K: fused candidates per request
    component_pool: int = Field(100, ge=1)  # each component's top-N pooled before fusing
    fusion_weights: dict[str, float] = {"itemcf": 1.0, "popularity": 0.3}
    normalization: str = "minmax"
    examination_power: float = Field(1.0, ge=0)  # P(examine slot s) = 1 / (1 + s) ** power
    attraction_true: float = Field(0.6, ge=0, le=1)  # the user's real next items
    attraction_related: float = Field(0.25, ge=0, le=1)  # complement / substitute of a next item
    attraction_category: float = Field(0.08, ge=0, le=1)  # same category as a next item
    attraction_other: float = Field(0.02, ge=0, le=1)
    cart_given_click: float = Field(0.3, ge=0, le=1)
    purchase_given_cart: float = Field(0.5, ge=0, le=1)


class ReinforceParams(_Section):
    steps: int = Field(300, ge=1)
    batch: int = Field(2048, ge=1)  # logged impressions a gradient step
    learning_rate: float = Field(0.05, gt=0)
    weight_clip: float = Field(10.0, gt=0)  # importance weights capped (variance for a little bias)
    l2: float = Field(1e-3, ge=0)
    logging_epsilon: float = Field(0.3, ge=0, le=1)  # exploration of the static logging policy
    seed: int = 0


class BenchParams(_Section):
    impressions: int = Field(50000, ge=100)  # online impressions per policy
    logged_impressions: int = Field(20000, ge=100)  # exploration log for REINFORCE and the estimators
    curve_points: int = Field(100, ge=2)
    bootstrap: int = Field(0, ge=0)  # 0: normal approximation intervals
    reports_dir: str = "reports/feedback"
    seed: int = 0


class FeedbackParams(_Section):
    rewards: RewardParams = RewardParams()
    exploration: ExplorationParams = ExplorationParams()
    policy: PolicyParams = PolicyParams()
    simulator: SimulatorParams = SimulatorParams()
    reinforce: ReinforceParams = ReinforceParams()
    bench: BenchParams = BenchParams()


def feedback_params(settings: Settings) -> FeedbackParams:
    return section(settings, "feedback", FeedbackParams)
