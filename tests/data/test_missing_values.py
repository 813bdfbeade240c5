"""One rule for a missing value in every column: empty, whitespace, "NaN", "null" and "N/A" are all missing.

A required column's missing value is quarantined with its not-null reason; an optional column's is allowed,
read as null and counted in validate's report. One data test per column of the contract, each form of
missing tried in that column alone on an otherwise good row (pipelines/bench/faults/data_rules.py, which
`shopfusion bench faults` runs too).
"""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.bench.faults.data_rules import CASES, FORMS, treated_alike, validated
from pipelines.core import contract
from pipelines.stages.validate import REASONS
from tests.conftest import repo_settings


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    return validated(tmp_path_factory.mktemp("missing"), repo_settings())


@pytest.mark.parametrize("table, column", CASES, ids=[f"{t}.{c}" for t, c in CASES])
def test_every_form_of_missing_is_treated_alike(outcome, table, column):
    frames, where, report = outcome
    assert treated_alike(frames, where, report, table, column), \
        frames["quarantine", table].set_index(contract.ROW).reindex(where[table, column])[REASONS].tolist()


def test_a_required_cell_that_is_present_is_never_quarantined(outcome):
    frames, _, _ = outcome
    for table in contract.TABLES:
        good_rows = pd.Series(range(10))
        assert good_rows.isin(frames["valid", table][contract.ROW]).all(), table
    assert len(FORMS) == 5
