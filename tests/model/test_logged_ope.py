"""Off-policy estimates from the service's log: on a simulated shop with a known click model, the
fused order's SNIPS estimate covers its true value."""

from __future__ import annotations

import numpy as np

from pipelines.feedback.log import FeedbackLog
from pipelines.feedback.logged import estimate_logged
from pipelines.serving.online import OnlineBandit
from tests.conftest import params_section

EXAMINE = 1.0 / (1.0 + np.arange(10))  # position bias of slot s
ATTRACT = np.linspace(0.5, 0.05, 20)  # attraction of the item the fusion ranked r


def test_fused_order_value_is_recovered_from_an_exploring_log(tmp_path):
    feedback = params_section("feedback", exploration={"epsilon": 0.3})
    bandit = OnlineBandit(tmp_path / "state.json", tmp_path / "log", params_section("serving.bandit", warmup_updates=10**9), feedback,
                          {"search": 5})
    log, rng = FeedbackLog(tmp_path / "log"), np.random.default_rng(0)
    for number in range(4000):
        served = bandit.order("search", np.linspace(1, 0, 20), {"bm25": rng.random(20), "dense": rng.random(20)})
        slots = served.order[:10]
        request_id = f"r{number}"
        log.served.append({"request_id": request_id, "task": "search", "timestamp": 0.0,
                           "items": [f"i{index}" for index in slots], "propensities": served.propensities[:10].tolist(),
                           "slate_features": served.slate_features[:10]})
        for slot, index in enumerate(slots):
            if rng.random() < EXAMINE[slot] * ATTRACT[index]:
                log.events.append({"request_id": request_id, "item_id": f"i{index}", "event_type": "click"})
    result = estimate_logged(tmp_path / "log", params_section("feedback.rewards", click=1.0))
    truth = float((EXAMINE * ATTRACT[:10]).sum())
    low, high = result["fused_order"]["snips"]["ci"]
    assert result["lists"] == 4000 and low <= truth <= high
    assert abs(result["fused_order"]["snips"]["value"] - truth) < 0.05
    low, high = result["fused_order"]["ips"]["ci"]
    assert low <= truth <= high
    clicks = sum(1 for _ in (tmp_path / "log" / "events.jsonl").open())
    assert result["logged_policy"]["value"] == round(clicks / 4000, 5)  # on-policy: clicks per list
