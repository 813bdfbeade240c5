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


def test_refused_keys_are_logged_by_id_and_counted(monkeypatch, caplog):
    import asyncio

    from pipelines.serving.security import GuardMiddleware, key_id

    monkeypatch.setenv("SHOPFUSION_API_KEYS", "the-right-key")
    monkeypatch.delenv("SHOPFUSION_ALLOW_ANONYMOUS", raising=False)
    refused, passed = [], []

    async def app(scope, receive, send):
        passed.append(scope["path"])

    guard = GuardMiddleware(app, ["/search"], ["/healthz"], 1000, on_denied=refused.append)
    sent = []

    async def send(message):
        sent.append(message)

    def call(headers):
        scope = {"type": "http", "path": "/search", "headers": headers}
        asyncio.run(guard(scope, None, send))

    caplog.set_level(logging.WARNING, logger="pipelines")
    call([(b"authorization", b"Bearer wrong-key-123")])
    call([])
    assert refused == ["invalid", "missing"] and not passed
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [401, 401]
    records = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert [r.key_id for r in records] == [key_id("wrong-key-123"), None]
    assert "wrong-key-123" not in caplog.text
