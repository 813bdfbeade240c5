"""2. Crash under load (pipelines/bench/faults/crash.py): a real 2-worker server answering concurrent /search and
/feedback calls loses a worker to SIGKILL every few seconds, then the whole server. Afterwards every line of
events.jsonl parses, every /feedback the clients saw acknowledged is in it, an event is written once unless its
client retried it (and a retry never counts twice towards a reward), and the server starts again on the same
folders."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import crash
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_workers_killed_under_load_lose_no_acknowledged_feedback(fault_context):
    fault = crash.run(fault_context)
    assert_ok(fault)
    assert fault.acknowledged == fault.present > 50 and fault.figures["workers_killed"] >= 2
