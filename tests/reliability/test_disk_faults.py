"""4. An unwritable feedback folder at start, and a disk that fills while serving (pipelines/bench/faults/disk.py:
a real tmpfs of 96 KB, a real ENOSPC; mounting needs root, so that part is skipped without it)."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import disk
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_unwritable_folder_refuses_and_a_full_disk_keeps_answering(fault_context):
    fault = disk.run(fault_context)
    assert_ok(fault)
    if not disk.can_mount():
        pytest.skip("the full-disk half needs root to mount a tmpfs (the unwritable-folder half passed)")
    assert fault.figures["disk_full_after_rounds"] is not None and fault.figures["served_log_failures"] > 0
