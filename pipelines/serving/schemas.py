"""Request and response models of the API: BentoML validates requests with them and publishes them in
its OpenAPI document (GET /docs.json)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# A value is stripped of whitespace (Unicode White_Space, what pydantic strips) before min_length: a blank one is
# refused, which the document says with a pattern (one character that is not such whitespace), or a client (and
# the fuzzer) reading minLength 1 would take " " for valid. The class is written out so that every regex engine
# (pydantic's Rust one, Python's, a client's ECMAScript one) reads the same characters.
NOT_BLANK = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512, pattern=NOT_BLANK)]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=NOT_BLANK)]
# strict: pydantic's lax mode took true and "5" for k (and false for a price), types the document refuses;
# strict refuses 5.0 too (a JSON integer by the letter of JSON Schema, which no client of k sends)
K = Annotated[int, Field(ge=1, le=100, strict=True, description="how many items to return (1..100)")]
EventType = Literal["view", "click", "add_to_cart", "purchase"]
# BentoML's OpenAPI document (3.0) flattens a response model's own `X | None` fields to X's schema (the first
# of pydantic's anyOf), so a null it answers (no fallback) broke the documented schema; OpenAPI 3.0 says
# "may be null" with `nullable`, which the flattening keeps. Nested models keep their anyOf and need none.
NULLABLE = {"nullable": True}
# The same flattening drops the null of an optional request parameter (`user_id: Identifier | None` became a bare
# string in the document, though null is served as "none"): parameters that may be null are declared with these.
OptionalIdentifier = Annotated[Identifier | None, Field(json_schema_extra=NULLABLE)]


class EventRow(BaseModel):
    """One canonical event (pipelines/core/contract.py `events`) as a shop's systems send it. The types are
    checked here; the contract's own rules (missing markers such as "null", a timestamp that parses) by the
    stream's intake (pipelines/feedback/stream.py check_events), which names the row and field of a bad one."""

    model_config = ConfigDict(extra="forbid")
    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    event_type: EventType
    timestamp: Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"format": "date-time"})]
    session_id: OptionalIdentifier = None


EventRows = Annotated[list[EventRow], Field(min_length=1, max_length=500)]


class ItemRow(BaseModel):
    """A new or changed product (pipelines/core/contract.py `catalog`, plus stock and removal). Only the fields
    sent change; a product the catalog does not hold yet needs a title. Stock 0 or removed: the product leaves
    every answer until it is back."""

    model_config = ConfigDict(extra="forbid")
    item_id: Identifier
    title: Annotated[Text | None, Field(json_schema_extra=NULLABLE)] = None
    description: Annotated[Annotated[str, StringConstraints(max_length=10_000)] | None,
                           Field(json_schema_extra=NULLABLE)] = None
    category: Annotated[Annotated[str, StringConstraints(strip_whitespace=True, max_length=256)] | None,
                        Field(json_schema_extra=NULLABLE)] = None
    brand: Annotated[Annotated[str, StringConstraints(strip_whitespace=True, max_length=256)] | None,
                     Field(json_schema_extra=NULLABLE)] = None
    price: Annotated[Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | None,
                     Field(json_schema_extra=NULLABLE)] = None
    stock: Annotated[Annotated[int, Field(ge=0, strict=True)] | None, Field(json_schema_extra=NULLABLE)] = None
    removed: Annotated[bool, Field(strict=True)] = False


ItemRows = Annotated[list[ItemRow], Field(min_length=1, max_length=500)]
ContextItemIds = Annotated[Annotated[list[Identifier], Field(max_length=50)] | None, Field(json_schema_extra=NULLABLE)]


class SearchFilters(BaseModel):
    # null is "no filters" (the search takes `SearchFilters | None`), and BentoML's document flattens that
    # parameter to a bare $ref here: the model itself says it may be null
    model_config = ConfigDict(extra="forbid", json_schema_extra=NULLABLE)
    category: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256,
                                               pattern=NOT_BLANK)] | None = None
    # finite only: pydantic's JSON parser reads NaN, Infinity and 1e999 as floats, and inf passed ge=0 (a 200)
    price_min: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | None = None
    price_max: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | None = None

    @model_validator(mode="after")
    def _price_range(self):
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min is above price_max")
        return self


class Explanation(BaseModel):
    contributions: dict[str, float] = Field(description="each component's part of the fused score")
    base: float = Field(description="the part every score shares; contributions + base = score")
    reasons: list[str]
    text: str


class RankedItem(BaseModel):
    rank: int
    item_id: str
    title: str
    category: str | None = None
    price: float | None = None
    score: float
    relevance: float | None = Field(None, description="predicted graded relevance of (query, item) on the judgments' "
                                                      "scale (search, when the bundle has a relevance model)")
    propensity: float = Field(description="probability the serving policy put this item in this slot")
    explanation: Explanation


class RankedResponse(BaseModel):
    request_id: str
    model_version: str
    policy: str
    fallback: str | None = Field(None, description="why the defined fallback answered (e.g. popularity)",
                                 json_schema_extra=NULLABLE)
    cached: bool = Field(False, description="whether the fused list came from the hot-request cache")
    notes: list[str] = []
    items: list[RankedItem]


class SimilarItem(BaseModel):
    item_id: str
    title: str
    category: str | None = None
    price: float | None = None
    score: float
    reason: str


class SimilarResponse(BaseModel):
    model_version: str
    item_id: str
    complements: list[SimilarItem] = Field(description="bought together: bundle suggestions")
    substitutes: list[SimilarItem] = Field(description="alternatives of the same category")
    fallback: str | None = Field(None, json_schema_extra=NULLABLE)
    popular: list[dict] = []


class FeedbackResponse(BaseModel):
    accepted: bool
    request_id: str
    known_request: bool = Field(description="whether this worker saw the request id being served")


class EventsResponse(BaseModel):
    accepted: int  # events published to the stream (all of the batch: a bad row refuses the whole batch)


class ItemsResponse(BaseModel):
    accepted: int  # products updated (all of the batch: a bad row refuses the whole batch)
    catalog_version: int  # the catalog stream's version after this batch; workers follow it within catalog_poll_ms
