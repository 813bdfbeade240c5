"""ingest, validate and clean on every real dataset: counts conserved, nothing lost."""

from __future__ import annotations

import pytest

from pipelines.core import contract
from pipelines.stages.clean import clean
from pipelines.stages.ingest import ingest
from pipelines.stages.validate import validate
from tests.conftest import SHARED_DATASETS, repo_settings

pytestmark = [pytest.mark.real_data, pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATASETS.exists(), reason="../shared/datasets is absent")]

SOURCES = {
    "home-depot": (SHARED_DATASETS / "home-depot-search-relevance", {"catalog": 54667, "queries": 74067}),
    "rechorus": (SHARED_DATASETS / "amazon-office", {"catalog": 2420, "events": 53258}),
    "sequences": (SHARED_DATASETS / "amazon-sequences" / "Beauty.txt", {"catalog": 12101, "events": 198502}),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_real_dataset_through_validate_and_clean(tmp_path, source):
    path, rows = SOURCES[source]
    settings = repo_settings()
    written = ingest(source, tmp_path / "raw", settings, str(path))
    summary = validate(tmp_path / "raw", tmp_path / "validated", settings)
    stats = clean(tmp_path / "validated" / "valid", tmp_path / "clean", settings)
    for table in contract.TABLES:
        counts = summary[table]
        assert counts["rows_in"] == written[table] == rows.get(table, 0)
        assert counts["rows_in"] == counts["rows_valid"] + counts["rows_quarantined"]
        assert stats[table]["rows_in"] == counts["rows_valid"]
        assert 0 < stats[table]["rows_out"] <= stats[table]["rows_in"] or rows.get(table, 0) == 0
    assert sum(c["rows_quarantined"] for c in summary.values()) <= 0.01 * sum(c["rows_in"] for c in summary.values())
