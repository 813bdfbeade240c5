"""10. The DAGs as a user meets them (pipelines/bench/faults/airflow.py): the DAG files import and the training
DAG's params validate with their defaults (the Trigger button works), graphviz is there for `airflow dags`, the
monitoring rule waits for served lists old enough to have clicks, and a Python task's INFO lines show as INFO in
its task log (a task run by Airflow's own supervisor)."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import airflow
from tests.reliability.conftest import assert_ok

pytestmark = pytest.mark.integration  # Airflow's DagBag and supervisor in subprocesses, a few seconds


def test_the_dags_as_a_user_meets_them(fault_context):
    fault = airflow.run(fault_context)
    assert_ok(fault)
    assert fault.requests == len(fault.checks) >= 7 and fault.errors == 0
    assert fault.figures["task_log_levels"] == airflow.PYTHON_TASK_LINES
