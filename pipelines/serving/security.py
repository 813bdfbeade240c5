"""API keys, body size limit and 422 for bad input, as one pure ASGI middleware.

Keys: SHOPFUSION_API_KEYS (comma-separated) or the file SHOPFUSION_API_KEYS_FILE (default
.secrets/api-keys, one key a line). Without any key the service refuses to start: an open API is a
decision, made with SHOPFUSION_ALLOW_ANONYMOUS=1, never a default. Keys are compared as SHA-256
digests in constant time. BentoML answers a request its input model rejects with 400 and the pydantic
error list (each error's `loc` names the field); on the API routes that answer becomes 422, an unknown key's
error placed at the object holding it (the key is the client's text, never quoted back). BentoML also
logs each such request with the ValidationError's traceback, whose text quotes every bad input value (a
query holding an email, a user id): `redact_request_errors` keeps the path and the field names only.

Bodies of the API routes are JSON only: any other Content-Type gets 415 before a byte of the body is read.
BentoML picks a deserializer by Content-Type (form parsing for form and multipart bodies, pickle.loads for
application/vnd.bentoml+pickle, refused only by an exact, case-sensitive comparison) and reads anything else
as JSON; a request without a Content-Type is read as JSON, as BentoML does. A body over max_body_bytes, by
its declared Content-Length or by what a chunked body has sent so far, gets 422 naming the field "body"
(the bad-input status of this API, as in the issue; never 413) and is not buffered beyond the limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger

log = get_logger(__name__)

DEFAULT_KEYS_FILE = ".secrets/api-keys"
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"  # its log_exception logs every failed request


UNKNOWN_FIELD = "extra_forbidden"  # pydantic's error type for a key a model (SearchFilters) does not have


def field_location(detail: dict) -> list:
    """Where a pydantic error is, by field names and list positions only: an unknown key is the client's own
    text (a typo, or an email pasted in as a filter name), so its error is placed at the object holding it."""
    location = list(detail.get("loc") or [])
    if detail.get("type") == UNKNOWN_FIELD and location:
        location = location[:-1]
    return location or ["body"]


def without_input_values(body: bytes) -> bytes:
    """BentoML's 400 body for a ValidationError (input values already left out) with each error's `loc` by
    field_location; any other body as it is."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if not isinstance(document, dict) or not isinstance(document.get("detail"), list):
        return body
    document["detail"] = [{**detail, "loc": field_location(detail)} if isinstance(detail, dict) else detail
                          for detail in document["detail"]]
    return json.dumps(document).encode("utf-8")


class FieldNamesOnly(logging.Filter):
    """A record carrying a pydantic ValidationError loses the traceback (it quotes the input values) and says
    which fields were invalid instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            fields = sorted({".".join(map(str, field_location(detail)))
                             for detail in error.errors(include_input=False, include_context=False)})
            record.msg = f"{record.getMessage()}: invalid fields {', '.join(fields)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def redact_request_errors() -> None:
    """Install FieldNamesOnly on BentoML's request-error logger (once)."""
    logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(existing, FieldNamesOnly) for existing in logger.filters):
        logger.addFilter(FieldNamesOnly())


def load_api_keys() -> list[str]:
    from_env = [key.strip() for key in os.environ.get("SHOPFUSION_API_KEYS", "").split(",") if key.strip()]
    if from_env:
        return from_env
    path = Path(os.environ.get("SHOPFUSION_API_KEYS_FILE", DEFAULT_KEYS_FILE))
    if path.exists():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    return []


def require_api_keys() -> list[str]:
    """The configured keys; none (and no explicit SHOPFUSION_ALLOW_ANONYMOUS=1) is a DataError."""
    keys = load_api_keys()
    if not keys and os.environ.get("SHOPFUSION_ALLOW_ANONYMOUS") != "1":
        path = Path(os.environ.get("SHOPFUSION_API_KEYS_FILE", DEFAULT_KEYS_FILE)).absolute()
        raise DataError(f"no API key configured: set SHOPFUSION_API_KEYS (comma-separated) or write keys to {path} "
                        "(or SHOPFUSION_ALLOW_ANONYMOUS=1 for an open API)")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


async def json_response(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


def bearer_token(headers: dict[bytes, bytes]) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None without one."""
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_id(token: str) -> str:
    """What logs say of a presented key: a prefix of its SHA-256, enough to tell repeated tries apart."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


JSON_MEDIA_TYPE = "application/json"


def media_types(raw_headers) -> list[str]:
    """The media type of every Content-Type header, lower-cased and without parameters (charset=...)."""
    return [value.decode("latin-1").split(";")[0].strip().lower() for name, value in raw_headers
            if name.lower() == b"content-type"]


def json_or_unsaid(raw_headers) -> bool:
    """Whether a body is JSON or says nothing of its type. Every Content-Type header is looked at: the guard
    and BentoML (starlette's first header) must not read different ones of two."""
    return all(media_type == JSON_MEDIA_TYPE for media_type in media_types(raw_headers))


class GuardMiddleware:
    def __init__(self, app, api_paths: list[str], public_paths: list[str], max_body_bytes: int, on_denied=None,
                 body_bytes_of_path: dict[str, int] | None = None):
        """on_denied(reason): called for each refused request ("missing" or "invalid" key), e.g. a metric.
        body_bytes_of_path: a larger limit for a path that takes batches (POST /events)."""
        self.app = app
        self.on_denied = on_denied
        self.api_paths = set(api_paths)
        self.public_paths = set(public_paths)
        self.max_body_bytes = max_body_bytes
        self.body_bytes_of_path = body_bytes_of_path or {}
        self.anonymous = os.environ.get("SHOPFUSION_ALLOW_ANONYMOUS") == "1"
        self.digests = [_digest(key) for key in require_api_keys()]

    def denied(self, headers: dict[bytes, bytes]) -> tuple[str, str | None] | None:
        """None when the request may pass, else why not ("missing" or "invalid") and the key's id."""
        if self.anonymous:
            return None
        token = bearer_token(headers)
        if token is None:
            return "missing", None
        if any(hmac.compare_digest(_digest(token), known) for known in self.digests):
            return None
        return "invalid", key_id(token)

    async def __call__(self, scope, receive, send):
        scope = real_path(scope)
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        denied = self.denied(headers)
        if denied is not None:
            reason, presented = denied
            # an unknown path is whatever a caller typed (an email, a token): logged as /unknown, like the metrics
            path = scope["path"] if scope["path"] in self.api_paths or scope["path"] == "/metrics" else "/unknown"
            log.warning("authentication failed", extra={"path": path, "reason": reason, "key_id": presented})
            if self.on_denied is not None:
                self.on_denied(reason)
            return await json_response(send, 401, {"error": "missing or invalid API key (Authorization: Bearer <key>)"},
                               [(b"www-authenticate", b"Bearer")])
        if scope["path"] not in self.api_paths:
            return await self.app(scope, receive, send)
        if not json_or_unsaid(scope.get("headers", [])):
            return await json_response(send, 415, {"error": "unsupported media type", "detail": [
                {"loc": ["header", "content-type"], "msg": f"send {JSON_MEDIA_TYPE}", "type": "media_type"}]})
        limit = self.body_bytes_of_path.get(scope["path"], self.max_body_bytes)
        body, too_large = await self._read_body(receive, headers, limit)
        if too_large:
            return await json_response(send, 422, {"error": "request body too large", "detail": [
                {"loc": ["body"], "msg": f"at most {limit} bytes", "type": "too_large"}]})
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        refused, refusal_body = None, []

        async def send_422_for_bad_input(message):
            """BentoML's 400 as 422, its body through without_input_values: the start is held until the body
            is complete, as the new body's length goes in the headers."""
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 400:
                refused = message
                return
            if refused is None or message["type"] != "http.response.body":
                return await send(message)
            refusal_body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            payload = without_input_values(b"".join(refusal_body))
            headers = [(name, value) for name, value in refused.get("headers", []) if name.lower() != b"content-length"]
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({**refused, "status": 422, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

        return await self.app(scope, replay, send_422_for_bad_input)

    async def _read_body(self, receive, headers, limit: int) -> tuple[bytes, bool]:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks), False


# ---- bounded request metrics ---------------------------------------------------------------------
UNKNOWN_PATH = "/unknown"
REAL_PATH = "shopfusion.real_path"  # scope key: the path and raw_path a request came with
BENTOML_PATHS = ("/", "/docs.json", "/schema.json", "/metrics", "/healthz", "/livez", "/readyz")
BENTOML_MOUNTS = ("/static_content", "/assets")  # static files of BentoML's index page


def metric_path(path: str, known: frozenset[str]) -> str:
    """The path a request is counted under: its own when the service routes it, its mount's for a static file,
    else UNKNOWN_PATH, so that random paths cannot add time series to /metrics (or a query's text to a label)."""
    if path in known:
        return path
    mount = next((prefix for prefix in BENTOML_MOUNTS if path.startswith(prefix + "/")), None)
    return mount or UNKNOWN_PATH


def bound_metric_paths(service_paths: list[str]) -> None:
    """BentoML's request metrics (bentoml_service_request_*) label each request with its raw path, and run
    before any middleware a service adds: 10,000 requests to random paths made 10,000 label values. This
    wraps that middleware so it (and the middlewares after it) see `metric_path`; GuardMiddleware, the
    service's first, puts the real path back before routing. Installed once per process."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    original = RunnerTrafficMetricsMiddleware.__call__
    if getattr(original, "bounded_paths", False):
        return
    known = frozenset([*BENTOML_PATHS, *service_paths])

    async def counted_by_known_path(self, scope, receive, send):
        if scope.get("type") == "http" and (path := metric_path(scope["path"], known)) != scope["path"]:
            scope = {**scope, "path": path, "raw_path": path.encode(), REAL_PATH: (scope["path"], scope.get("raw_path"))}
        return await original(self, scope, receive, send)

    counted_by_known_path.bounded_paths = True
    RunnerTrafficMetricsMiddleware.__call__ = counted_by_known_path


def real_path(scope: dict) -> dict:
    """The scope with the path bound_metric_paths replaced for the metrics put back."""
    if REAL_PATH not in scope:
        return scope
    path, raw_path = scope[REAL_PATH]
    return {key: value for key, value in scope.items() if key != REAL_PATH} | {"path": path, "raw_path": raw_path}


# What the guard, the limits and the slow-client deadline answer besides BentoML's own statuses
REFUSALS = {
    401: "missing or invalid API key (Authorization: Bearer <key>)",
    408: "the request body did not arrive in time (serving.slow_clients.body_timeout_s)",
    415: "the body is not application/json",
    422: "invalid input: each error names its field, never its value (also a body over serving.max_body_bytes)",
    429: "over the key's rate or the worker's concurrency cap (serving.limits); see Retry-After",
    503: "not recorded now (the feedback log cannot be written, the event stream is unreachable); see Retry-After",
}


def document_refusals(service, api_paths: list[str], path_refusals: dict[str, dict[int, str]] | None = None) -> None:
    """BentoML's OpenAPI document lists 200, 400, 404 and 500 for each API and makes its body optional; this
    service also answers REFUSALS and needs a JSON body on every API call. The document is amended where it is
    made (Service.openapi_spec, which /docs.json and `bentoml build` read), so clients see what they will get."""
    from bentoml._internal.service.openapi.specification import MediaType, Response, Schema

    service_class = type(service)
    generate = service_class.openapi_spec.fget
    if getattr(generate, "documents_refusals", False):
        return
    refusals = {status: Response(description=text, content={JSON_MEDIA_TYPE: MediaType(schema=Schema(type="object"))})
                for status, text in REFUSALS.items()}

    def openapi_spec(self):
        spec = generate(self)
        for path in api_paths:
            operation = spec.paths[path].post  # the dict BentoML's generate_spec builds
            extra = {status: Response(description=text, content={JSON_MEDIA_TYPE: MediaType(schema=Schema(type="object"))})
                     for status, text in (path_refusals or {}).get(path, {}).items()}
            operation["responses"] = {**operation["responses"], **refusals, **extra}
            body = operation.get("requestBody")
            operation["requestBody"] = {**body, "required": True} if isinstance(body, dict) else \
                attr.evolve(body, required=True)
        return spec

    openapi_spec.documents_refusals = True
    service_class.openapi_spec = property(openapi_spec)
