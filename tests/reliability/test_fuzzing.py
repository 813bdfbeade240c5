"""Fuzzing: schemathesis cases (positive and negative) of every operation in the service's OpenAPI document and
hostile bodies (pickles, text and forms, oversized and chunked bodies, 5,000-deep JSON, NaN and Infinity) against a
real 2-worker server: no 5xx, every answer as documented by schemathesis's checks, invalid data refused, every
refusal a 4xx of this API, no error body quoting the request (pipelines/bench/faults/fuzzing.py)."""

from __future__ import annotations

import pytest

from pipelines.bench.faults.fuzzing import run
from tests.reliability.conftest import assert_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fuzzed_and_hostile_bodies_get_no_5xx_and_documented_answers(fault_context):
    fault = run(fault_context)

    assert_ok(fault)
    assert fault.errors == 0 and fault.figures["server_errors"] == 0, fault.figures
    assert not fault.figures["check_failures"], fault.figures["failure_examples"]
    assert set(fault.figures["pickle"].values()) == {415} and not fault.figures["canary_created"]
    examples = fault_context.params.fuzz_examples
    for path in ("/search", "/recommend", "/similar", "/feedback"):  # the examples were sent, not skipped
        cases = fault.figures["cases"][f"POST {path}"]
        assert cases["positive"] >= 0.9 * examples and cases["negative"] >= 0.9 * examples, cases
