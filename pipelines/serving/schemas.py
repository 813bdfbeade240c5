"""Request and response models of the API: BentoML validates requests with them and publishes them in
its OpenAPI document (GET /docs.json)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
K = Annotated[int, Field(ge=1, le=100, description="how many items to return (1..100)")]
EventType = Literal["view", "click", "add_to_cart", "purchase"]


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)] | None = None
    price_min: Annotated[float, Field(ge=0)] | None = None
    price_max: Annotated[float, Field(ge=0)] | None = None

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
    fallback: str | None = Field(None, description="why the defined fallback answered (e.g. popularity)")
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
    fallback: str | None = None
    popular: list[dict] = []


class FeedbackResponse(BaseModel):
    accepted: bool
    request_id: str
    known_request: bool = Field(description="whether this worker saw the request id being served")
