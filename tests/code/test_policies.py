"""Bandit re-rankers: bounded slates, exact/estimated propensities, learning, crash-safe persistence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.core import atomic
from pipelines.feedback import policies as P
from tests.conftest import params_section

BOUNDS = params_section("feedback.exploration", slate_size=5, top_m=8, max_shift=2, epsilon=0.1)
PARAMS = params_section("feedback.policy", thompson_samples=400)
KINDS = ("epsilon_greedy", "linucb", "thompson")
EXAMINATION = 1 / (1 + np.arange(BOUNDS.slate_size))
TRUE_THETA = np.array([0.0, -0.3, 0.6])


def make_context(rng, k=12):
    """Fused order is only weakly related to attraction: the second feature is anti-correlated."""
    features = np.column_stack([np.ones(k), rng.random(k), rng.random(k)])
    return P.SlateContext(np.arange(100, 100 + k), -np.arange(k, dtype=float), features)


def attraction(context):
    return np.clip(0.2 + context.features @ TRUE_THETA, 0.01, 0.99)


def frequencies(policy, context, draws):
    counts = np.zeros((BOUNDS.slate_size, len(context)))
    for _ in range(draws):
        counts[np.arange(BOUNDS.slate_size), policy.rank(context).candidates] += 1
    return counts / draws


def test_uniform_marginals_are_exact_distributions_matching_sampling():
    marginals = P.uniform_marginals(12, BOUNDS)
    assert np.allclose(marginals.sum(axis=1), 1.0)
    assert np.all(marginals.sum(axis=0) <= 1 + 1e-12)
    assert np.all(marginals[:, 8:] == 0)  # never beyond the top-M
    rng = np.random.default_rng(0)
    sampled = P.slate_marginals(np.array([P.uniform_slate(12, BOUNDS, rng) for _ in range(20000)]), 12)
    assert np.abs(sampled - marginals).max() < 0.015


def test_a_single_row_greedy_slate_equals_the_batched_one():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((300, 12)), 1)  # rounded: ties, which both must break to the first candidate
    batched = P.greedy_slates(scores, BOUNDS)
    assert batched.shape == (300, BOUNDS.slate_size)
    assert all(np.array_equal(P.greedy_slates(row, BOUNDS)[0], slate) for row, slate in zip(scores, batched))


@pytest.mark.parametrize("kind", KINDS + ("static",))
def test_every_slate_respects_the_exploration_bounds(kind):
    rng = np.random.default_rng(1)
    policy = P.StaticFusion(3, BOUNDS, PARAMS, epsilon=0.5) if kind == "static" else P.make_policy(kind, 3, BOUNDS, PARAMS)
    for _ in range(300):
        context = make_context(rng)
        slate = policy.rank(context)
        assert len(set(slate.candidates.tolist())) == BOUNDS.slate_size
        assert slate.candidates.max() < BOUNDS.top_m
        assert np.abs(slate.candidates - np.arange(BOUNDS.slate_size)).max() <= BOUNDS.max_shift
        assert np.all(slate.propensities > 0) and np.all(slate.propensities <= 1)
        assert np.array_equal(slate.items, context.items[slate.candidates])


@pytest.mark.parametrize("kind", KINDS)
def test_propensities_match_the_served_frequencies(kind):
    rng = np.random.default_rng(2)
    policy = P.make_policy(kind, 3, BOUNDS, PARAMS, seed=3)
    context = make_context(rng)
    for _ in range(50):  # a fitted model, so the greedy part is not trivial
        slate = policy.rank(context)
        policy.update(context, slate, (rng.random(BOUNDS.slate_size) < attraction(context)[slate.candidates]) * 1.0)
    marginals = policy.marginals(context)
    assert np.allclose(marginals.sum(axis=1), 1.0)
    observed = frequencies(policy, context, 3000)
    tolerance = 0.06 if kind == "thompson" else 0.03  # Thompson's are Monte Carlo estimates
    assert np.abs(observed - marginals).max() < tolerance
    slate = policy.rank(context)
    if kind != "thompson":  # exact: the returned propensity is the marginal itself
        assert np.allclose(slate.propensities, marginals[np.arange(BOUNDS.slate_size), slate.candidates])


@pytest.mark.parametrize("kind", KINDS)
def test_bandits_learn_to_beat_the_fused_order(kind):
    rng = np.random.default_rng(4)
    contexts = [make_context(rng) for _ in range(50)]
    policy = P.make_policy(kind, 3, BOUNDS, PARAMS, seed=5)
    for _ in range(1500):
        context = contexts[rng.integers(len(contexts))]
        slate = policy.rank(context)
        clicks = rng.random(BOUNDS.slate_size) < EXAMINATION * attraction(context)[slate.candidates]
        policy.update(context, slate, clicks * 1.0)

    def value(p):
        return np.mean([(p.marginals(c) * EXAMINATION[:, None] * attraction(c)).sum() for c in contexts])

    static = value(P.StaticFusion(3, BOUNDS, PARAMS))
    assert value(policy) > static * 1.1
    assert policy.n_updates == 1500


def test_slot_rewards_add_the_weights_of_each_slots_events():
    rewards = P.slot_rewards(4, [(0, "click"), (2, "click"), (2, "add_to_cart"), (2, "purchase"), (9, "click"),
                                 (1, "view")], params_section("feedback.rewards", click=1, add_to_cart=2, purchase=5))
    assert rewards.tolist() == [1.0, 0.0, 8.0, 0.0]


def test_a_retried_event_counts_once():
    weights = params_section("feedback.rewards", click=1, add_to_cart=2, purchase=5)
    retried = P.slot_rewards(3, [(1, "click"), (1, "click"), (1, "purchase"), (1, "purchase")], weights)
    assert retried.tolist() == [0.0, 6.0, 0.0]


def _trained(kind, seed=6):
    rng = np.random.default_rng(seed)
    policy = P.make_policy(kind, 3, BOUNDS, PARAMS, seed=seed)
    context = make_context(rng)
    for _ in range(30):
        slate = policy.rank(context)
        policy.update(context, slate, rng.random(BOUNDS.slate_size))
    return policy, context


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_restore_the_exact_state(kind, tmp_path):
    policy, context = _trained(kind)
    policy.save(tmp_path / "policy.json")
    restored = P.load_policy(tmp_path / "policy.json")
    assert restored.kind == kind and restored.n_updates == policy.n_updates
    assert np.array_equal(restored.model.precision, policy.model.precision)
    for _ in range(5):  # same model and random state: the very same slates and propensities
        a, b = policy.rank(context), restored.rank(context)
        assert np.array_equal(a.candidates, b.candidates) and np.array_equal(a.propensities, b.propensities)


def test_state_survives_a_process_restart(tmp_path):
    policy, context = _trained("thompson")
    policy.save(tmp_path / "policy.json")
    np.save(tmp_path / "features.npy", context.features)
    script = (
        "import json, sys, numpy as np\n"
        "from pipelines.feedback.policies import load_policy, SlateContext\n"
        "policy = load_policy(sys.argv[1])\n"
        "features = np.load(sys.argv[2])\n"
        "context = SlateContext(np.arange(100, 100 + len(features)), -np.arange(len(features), dtype=float), features)\n"
        "print(json.dumps(policy.rank(context).candidates.tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "policy.json"), str(tmp_path / "features.npy")],
                            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert json.loads(result.stdout.strip().splitlines()[-1]) == policy.rank(context).candidates.tolist()


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    policy, _ = _trained("linucb")
    target = tmp_path / "policy.json"
    policy.save(target)
    before = target.read_bytes()
    policy.update(*_one_feedback(policy))

    def crash(*_args):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        policy.save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]  # no temp file left behind
    assert P.load_policy(target).n_updates == policy.n_updates - 1


def _one_feedback(policy):
    context = make_context(np.random.default_rng(9))
    slate = policy.rank(context)
    return context, slate, np.ones(BOUNDS.slate_size)


def test_periodic_saver_saves_every_n_updates_or_t_seconds(tmp_path):
    policy, _ = _trained("epsilon_greedy")
    now = [0.0]
    saver = P.PeriodicSaver(policy, tmp_path / "p.json", every_updates=3, every_seconds=10.0, clock=lambda: now[0])
    saved = [saver.notify() for _ in range(7)]
    assert saved == [False, False, True, False, False, True, False]
    now[0] = 11.0
    assert saver.notify() is True
    assert P.load_policy(tmp_path / "p.json").n_updates == policy.n_updates
    from_params = P.PeriodicSaver.from_params(policy, tmp_path / "q.json")
    assert (from_params.every_updates, from_params.every_seconds) == (PARAMS.save_every_updates,
                                                                     PARAMS.save_every_seconds)


def test_loading_something_else_is_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"kind": "nope"}))
    with pytest.raises(ValueError):
        P.load_policy(tmp_path / "x.json")


def test_reinforce_masks_agree_with_the_serving_bounds_and_training_beats_the_logger():
    from pipelines.feedback.reinforce import (
        LoggedSlates,
        allowed_masks,
        train_reinforce,
    )

    rng = np.random.default_rng(12)
    contexts = [make_context(rng) for _ in range(40)]
    logger = P.StaticFusion(3, BOUNDS, PARAMS, epsilon=0.5, seed=13)
    rows = rng.integers(len(contexts), size=3000)
    slates = [logger.rank(contexts[r]) for r in rows]
    candidates = np.array([s.candidates for s in slates])
    allowed, _ = allowed_masks(candidates, 12, BOUNDS)
    for slate, mask in zip(slates[:200], allowed[:200]):
        chosen = 0
        for slot, pick in enumerate(slate.candidates):
            assert np.flatnonzero(mask[slot]).tolist() == P._allowed(chosen, slot, BOUNDS.top_m, BOUNDS.max_shift)
            chosen |= 1 << int(pick)
    rewards = np.array([(rng.random(BOUNDS.slate_size) < EXAMINATION * attraction(contexts[r])[s.candidates]) * 1.0
                        for r, s in zip(rows, slates)])
    logged = LoggedSlates.from_contexts([contexts[r] for r in rows], candidates, rewards,
                                        np.array([s.propensities for s in slates]))
    result = train_reinforce(logged, BOUNDS, params_section("feedback.reinforce", steps=200, batch=512))

    def value(p):
        return np.mean([(p.marginals(c) * EXAMINATION[:, None] * attraction(c)).sum() for c in contexts])

    assert value(result.policy(BOUNDS, PARAMS)) > 1.1 * value(P.StaticFusion(3, BOUNDS, PARAMS))
    assert np.mean(result.objective[-20:]) > np.mean(result.objective[:20])


def test_one_slates_marginals_are_its_one_hot_rows():
    slate = np.array([[2, 0, 1]])
    assert np.array_equal(P.slate_marginals(slate, 4), P.slate_marginals(np.repeat(slate, 2, axis=0), 4))
    assert np.array_equal(P.slate_marginals(slate, 4), np.eye(4)[[2, 0, 1]])


@pytest.mark.parametrize("n_candidates", [1, 3, 12, 40])
def test_the_static_fusions_slate_is_the_greedy_slate_of_its_scores(n_candidates):
    policy = P.StaticFusion(4, BOUNDS, params_section("feedback.policy"))
    context = P.SlateContext(np.arange(n_candidates), np.zeros(n_candidates), np.zeros((n_candidates, 4)))
    assert np.array_equal(policy.own_slate(context), P.greedy_slates(policy.scores(context), BOUNDS)[0])


@pytest.mark.parametrize("kind", ["static", *KINDS])
def test_a_slates_propensities_are_its_cells_of_the_policys_marginals(kind):
    """rank() reads only the served cells (one-hot own marginals for a deterministic policy): they equal the
    full marginals' cells, explored slates included."""
    rng = np.random.default_rng(5)
    policy = P.make_policy(kind, 4, BOUNDS, params_section("feedback.policy"), seed=1)
    for _ in range(40):
        context = P.SlateContext(np.arange(12), np.zeros(12), rng.random((12, 4)))
        picks = P.uniform_slate(12, BOUNDS, rng) if rng.random() < 0.5 else policy.own_slate(context)
        state = policy.rng.bit_generator.state
        got = policy.slot_propensities(context, picks)
        policy.rng.bit_generator.state = state  # Thompson samples its marginals: the same draws for both
        expected = policy.marginals(context, served=picks)[np.arange(len(picks)), picks]
        np.testing.assert_allclose(got, expected)
