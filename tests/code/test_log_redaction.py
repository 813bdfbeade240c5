"""BentoML's log line for a rejected request names the invalid fields, never the values sent."""

from __future__ import annotations

import io
import logging

import pytest
from pydantic import BaseModel, Field, ValidationError

from pipelines.serving.security import BENTOML_REQUEST_LOGGER, redact_request_errors


class Search(BaseModel):
    query: str = Field(max_length=10)
    k: int


def test_validation_errors_are_logged_without_their_input_values():
    logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        redact_request_errors()
        redact_request_errors()  # installed once however often the service starts
        with pytest.raises(ValidationError) as error:
            Search(query="call jane.doe@example.com", k="ten")
        try:
            raise error.value
        except ValidationError:
            logger.error("Exception on %s [%s]", "/search", "POST", exc_info=True)
        redacted = stream.getvalue()
        try:
            raise RuntimeError("model failed")
        except RuntimeError:
            logger.error("Exception on %s [%s]", "/search", "POST", exc_info=True)
    finally:
        logger.removeHandler(handler)
    assert redacted == "Exception on /search [POST]: invalid fields k, query\n"
    assert "RuntimeError: model failed" in stream.getvalue()  # other errors keep their traceback
    assert sum(type(f).__name__ == "FieldNamesOnly" for f in logger.filters) == 1
