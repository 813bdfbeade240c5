"""Slow clients (issue #19, point 8): connections trickling headers and bodies beside normal /search calls on a
real 2-worker server; the scenario is pipelines/bench/faults/slow_clients.py, as `shopfusion bench faults` runs it."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import slow_clients
from tests.reliability.conftest import TEST_FAULTS, assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_slow_clients_are_cut_off_on_time_without_slowing_searches(fault_context):
    fault = slow_clients.run(fault_context)
    assert_ok(fault)
    for kind, opened_at_least in (("headers", TEST_FAULTS.slow_headers), ("bodies", TEST_FAULTS.slow_bodies)):
        figures = fault.figures[kind]
        assert figures["opened"] >= opened_at_least and figures["cut"] == figures["opened"], figures
        assert figures["cut_after_s_max"] <= figures["timeout_s"] + figures["slack_s"], figures
    assert fault.figures["bodies"]["statuses"] == {"408": fault.figures["bodies"]["opened"]}
