"""5. PII canaries (pipelines/bench/faults/pii.py) typed into every field of the service's calls and into the raw
files of a shop run through validate and clean: none appears in a log, cache, Redis, metrics page, feedback
log, Data Docs page or artifact after clean."""

from __future__ import annotations

import pytest

from pipelines.bench.faults import pii
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_no_canary_leaks_anywhere(fault_context):
    fault = pii.run(fault_context)
    assert_ok(fault)
    assert fault.figures["redis_keys"] > 0 and fault.figures["data_docs_pages"] > 0


def test_the_scan_finds_a_planted_canary(tmp_path):
    (tmp_path / "log.txt").write_text("user +44 20 7946 0958 searched", encoding="utf-8")
    (tmp_path / "digits.txt").write_text("card=4111111111111111", encoding="utf-8")
    found = pii.leaks(pii.folder_texts(tmp_path))
    assert sorted(found) == sorted([f"{tmp_path / 'log.txt'}: phone_uk", f"{tmp_path / 'digits.txt'}: card"])
