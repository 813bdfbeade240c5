"""The online bandit learns from the durable feedback log; its state survives a restart and a crash."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.feedback.log import FeedbackLog
from pipelines.serving.online import OnlineBandit
from tests.conftest import params_section

COMPONENTS = ("bm25", "dense")
DIMENSION = 3 + len(COMPONENTS)  # bias, fused, components, reciprocal rank


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def make_bandit(tmp_path, clock, warmup=5):
    params = params_section("serving.bandit", warmup_updates=warmup, settle_seconds=10, save_seconds=60)
    feedback = params_section("feedback", policy={"save_every_updates": 10_000, "save_every_seconds": 1e9})
    return OnlineBandit(tmp_path / "state.json", tmp_path / "log", params, feedback, {"search": DIMENSION}, clock=clock)


def serve_and_click(bandit, log, clock, count, rng):
    """Lists of 12 candidates; the shopper always clicks the candidate the fusion ranked 4th."""
    for number in range(count):
        fused = np.sort(rng.random(12))[::-1]
        served = bandit.order("search", fused, {name: rng.random(12) for name in COMPONENTS})
        items = [f"item{index}" for index in served.order]
        request_id = f"r{clock.now}-{number}"
        log.served.append({"request_id": request_id, "task": "search", "timestamp": clock(), "items": items[:10],
                           "slate_features": served.slate_features[:10], "propensities": served.propensities[:10].tolist()})
        log.events.append({"request_id": request_id, "item_id": "item3", "event_type": "click", "timestamp": clock()})
        clock.now += 1


def test_bandit_learns_from_the_log_and_switches_from_warm_up(tmp_path):
    clock, rng = Clock(), np.random.default_rng(0)
    bandit, log = make_bandit(tmp_path, clock), FeedbackLog(tmp_path / "log")
    serve_and_click(bandit, log, clock, 8, rng)
    assert bandit.order("search", np.linspace(1, 0, 12), {n: rng.random(12) for n in COMPONENTS}).policy == "static"
    clock.now += 60
    assert bandit.poll() == 8
    assert bandit.policies["search"].n_updates == 8
    assert bandit.order("search", np.linspace(1, 0, 12), {n: rng.random(12) for n in COMPONENTS}).policy == "linucb"
    assert bandit.poll() == 0  # nothing new: nothing counted twice


def test_state_survives_a_restart_and_a_crash_between_saves(tmp_path):
    clock, rng = Clock(), np.random.default_rng(1)
    bandit, log = make_bandit(tmp_path, clock), FeedbackLog(tmp_path / "log")
    serve_and_click(bandit, log, clock, 6, rng)
    clock.now += 60
    bandit.poll()
    bandit.save()
    restarted = make_bandit(tmp_path, clock)
    assert restarted.policies["search"].n_updates == 6
    np.testing.assert_allclose(restarted.policies["search"].model.theta, bandit.policies["search"].model.theta)
    assert restarted.offsets == bandit.offsets

    serve_and_click(bandit, log, clock, 5, rng)  # more traffic, learned, then a crash before the next save
    clock.now += 20  # past settle_seconds (10), before the next timed save (save_seconds 60)
    bandit.poll()
    crashed_theta = bandit.policies["search"].model.theta.copy()
    recovered = make_bandit(tmp_path, clock)  # from the last save: replays the log since its offsets
    assert recovered.poll() == 5
    assert recovered.policies["search"].n_updates == 11
    np.testing.assert_allclose(recovered.policies["search"].model.theta, crashed_theta)


def test_a_damaged_state_file_is_a_clear_error(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(Exception, match="state.json: unreadable bandit state"):
        make_bandit(tmp_path, Clock())


@pytest.mark.parametrize("updates", [0, 10])
def test_ordering_reads_the_fused_top_m_alone_and_serves_the_rest_after_it(tmp_path, updates):
    """The fused top-M bounds what a policy may serve: scoring only those candidates gives the slates and
    propensities a policy ranking all of them gives (warm-up and learned policy)."""
    from pipelines.feedback.policies import build_context

    clock, rng = Clock(), np.random.default_rng(3)
    bandit, reference = make_bandit(tmp_path / "a", clock), make_bandit(tmp_path / "b", clock)
    features = rng.random((updates, DIMENSION))
    for model in (bandit, reference):
        for row in features:  # the same learned model in both
            policy = model.policies["search"]
            policy.model.update(row[None, :], np.ones(1), np.ones(1))
            policy.n_updates = 10 if updates else 0
    top_m = bandit.feedback.exploration.top_m
    for _ in range(30):
        size = top_m * 3
        fused, components = np.sort(rng.random(size))[::-1], {name: rng.random(size) for name in COMPONENTS}
        served = bandit.order("search", fused, components)
        full = build_context(np.arange(size), fused, components)
        learned = reference.policies["search"]
        policy = learned if learned.n_updates >= reference.params.warmup_updates else reference.warmup["search"]
        slate = policy.rank(full)
        assert np.array_equal(served.order[:len(slate.items)], slate.items)
        np.testing.assert_allclose(served.propensities[:len(slate.items)], slate.propensities)
        assert sorted(served.order) == list(range(size)) and len(served.context) == top_m
