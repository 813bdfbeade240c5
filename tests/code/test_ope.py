"""Off-policy estimators against synthetic logs whose true target value is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.feedback import ope
from pipelines.feedback.policies import FixedLinearPolicy, SlateContext, StaticFusion
from tests.conftest import params_section

SEEDS = 50
N_LOGGED = 2000


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bandit():
    """200 contexts x 5 actions: Bernoulli rewards, a logging and a target softmax policy, the exact value."""
    rng = np.random.default_rng(7)
    contexts = rng.normal(size=(200, 3))
    coefficients = rng.normal(size=(3, 5))
    mean_reward = 1 / (1 + np.exp(-(contexts @ coefficients)))
    logging = softmax(contexts @ rng.normal(size=(3, 5)) * 0.5)
    target = softmax(contexts @ coefficients * 2.0)  # prefers the better actions
    truth = float((target * mean_reward).sum(axis=1).mean())
    return {"mean": mean_reward, "logging": logging, "target": target, "truth": truth}


def simulate(bandit, seed, n=N_LOGGED):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(bandit["mean"]), n)
    cumulative = bandit["logging"][rows].cumsum(axis=1)
    actions = (rng.random((n, 1)) > cumulative).sum(axis=1)
    rewards = (rng.random(n) < bandit["mean"][rows, actions]).astype(float)
    return rows, actions, rewards


def estimates(bandit, seed, model):
    rows, actions, rewards = simulate(bandit, seed)
    target_p = bandit["target"][rows, actions]
    logging_p = bandit["logging"][rows, actions]
    q = model[rows]
    return {
        "ips": ope.ips(rewards, target_p, logging_p),
        "snips": ope.snips(rewards, target_p, logging_p),
        "dr": ope.doubly_robust(rewards, target_p, logging_p, q[np.arange(len(rows)), actions],
                                ope.direct_term(bandit["target"][rows], q)),
    }


@pytest.fixture(scope="module")
def runs(bandit):
    good_model = bandit["mean"]
    wrong_model = np.full_like(bandit["mean"], 0.9)
    return {"good": [estimates(bandit, seed, good_model) for seed in range(SEEDS)],
            "wrong": [estimates(bandit, seed, wrong_model) for seed in range(SEEDS)]}


def values(runs, name):
    return np.array([run[name].value for run in runs])


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_the_95_percent_interval_covers_the_true_value_in_most_seeds(bandit, runs, name):
    coverage = np.mean([run[name].covers(bandit["truth"]) for run in runs["wrong"]])
    assert coverage >= 0.85


@pytest.mark.parametrize("name", ["ips", "snips"])
def test_estimates_converge_to_the_true_value(bandit, name):
    estimator = getattr(ope, name)

    def estimate(n):
        rows, actions, rewards = simulate(bandit, 123, n=n)
        return estimator(rewards, bandit["target"][rows, actions], bandit["logging"][rows, actions])

    small, large = estimate(2000), estimate(200_000)
    assert abs(large.value - bandit["truth"]) < 3 * large.std_error
    assert large.std_error < small.std_error / 5  # shrinks like 1 / sqrt(n)
    assert abs(large.value - bandit["truth"]) < 0.02


def test_snips_varies_less_than_ips(runs):
    assert values(runs["wrong"], "snips").var() < values(runs["wrong"], "ips").var()


def test_doubly_robust_is_unbiased_with_a_wrong_reward_model(bandit, runs):
    dr = values(runs["wrong"], "dr")
    assert abs(dr.mean() - bandit["truth"]) < 3 * dr.std(ddof=1) / np.sqrt(SEEDS)
    direct_only = float((bandit["target"] * 0.9).sum(axis=1).mean())
    assert abs(direct_only - bandit["truth"]) > 0.1  # the model alone is far off (0.9 everywhere)


def test_doubly_robust_varies_less_with_a_good_model(runs):
    good, wrong = values(runs["good"], "dr"), values(runs["wrong"], "dr")
    assert good.var() < 0.5 * values(runs["good"], "ips").var()
    assert good.var() < wrong.var()


def test_bootstrap_interval_agrees_with_the_normal_one(bandit):
    rows, actions, rewards = simulate(bandit, 3)
    args = (rewards, bandit["target"][rows, actions], bandit["logging"][rows, actions])
    normal, boot = ope.snips(*args), ope.snips(*args, bootstrap=300, seed=1)
    assert boot.value == normal.value
    assert abs((boot.high - boot.low) - (normal.high - normal.low)) < 0.3 * (normal.high - normal.low)


def test_zero_logging_propensity_is_refused():
    with pytest.raises(ValueError):
        ope.ips([1.0], [0.5], [0.0])


def test_position_based_slate_estimates_cover_the_exact_slate_value():
    """Slates of 3 out of 6 candidates, position-based clicks; logger explores uniformly, target is a frozen scorer."""
    rng = np.random.default_rng(11)
    bounds = params_section("feedback.exploration", slate_size=3, top_m=6, max_shift=2, epsilon=0.2)
    contexts = [SlateContext(np.arange(6), -np.arange(6.0), rng.normal(size=(6, 2))) for _ in range(30)]
    attraction = [1 / (1 + np.exp(-(c.features @ np.array([1.5, -1.0])))) for c in contexts]
    examination = 1 / (1 + np.arange(3))
    target = FixedLinearPolicy(np.array([1.5, -1.0]), bounds, params_section("feedback.policy"))
    target_marginals = [target.marginals(c) for c in contexts]
    truth = np.mean([(m * examination[:, None] * a).sum() for m, a in zip(target_marginals, attraction)])
    logger_value = np.mean([(StaticFusion(2, bounds, params_section("feedback.policy"), epsilon=1.0).marginals(c)
                             * examination[:, None] * a).sum() for c, a in zip(contexts, attraction)])
    assert truth > logger_value + 0.1  # the target is really different from the logger

    covered = []
    for seed in range(SEEDS):
        logger = StaticFusion(2, bounds, params_section("feedback.policy"), epsilon=1.0, seed=seed)
        draw = np.random.default_rng(1000 + seed)
        rewards, target_p, logging_p = [], [], []
        for row in draw.integers(0, len(contexts), 1000):
            slate = logger.rank(contexts[row])
            clicks = draw.random(3) < examination * attraction[row][slate.candidates]
            rewards.append(clicks.astype(float))
            target_p.append(target_marginals[row][np.arange(3), slate.candidates])
            logging_p.append(slate.propensities)
        covered.append(ope.snips(np.array(rewards), np.array(target_p), np.array(logging_p)).covers(truth))
    assert np.mean(covered) >= 0.85
