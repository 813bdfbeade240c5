"""11. Pipeline (pipelines/bench/faults/pipeline.py): trigger overrides outside the allow-list refused with one
line, promote and rollback from many processes at once lose no decision, key files 0600 from creation."""

from __future__ import annotations

from pipelines.bench.faults import pipeline
from tests.reliability.conftest import assert_ok


def test_overrides_promotion_lock_and_key_modes(tmp_path):
    from pipelines.bench.faults import FaultContext
    from tests.reliability.conftest import TEST_FAULTS

    fault = pipeline.run(FaultContext(tmp_path / "no-bundle", tmp_path, TEST_FAULTS))
    assert_ok(fault)
    assert fault.present == fault.acknowledged == pipeline.CALLS
