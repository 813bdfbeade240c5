"""9. Data rules (pipelines/bench/faults/data_rules.py): every form of a missing value, in every column of the
contract, meets that column's one rule; tests/data/test_missing_values.py has the test per column."""

from __future__ import annotations

from pipelines.bench.faults import FaultContext, data_rules
from tests.reliability.conftest import TEST_FAULTS, assert_ok


def test_every_column_has_one_rule_for_missing(tmp_path):
    fault = data_rules.run(FaultContext(tmp_path / "no-bundle", tmp_path, TEST_FAULTS))
    assert_ok(fault)
    assert fault.requests == len(data_rules.CASES) * len(data_rules.FORMS) and fault.errors == 0
