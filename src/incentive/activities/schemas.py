from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from incentive.kit.amounts import Fen
from incentive.kit.pagination import Page
from incentive.kit.text import Line

# Ids a sender gives (its activity ids, its customers', merchants' and staff's): printable
# ASCII without spaces, so they sort, print and travel in URLs as they are.
SenderId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,64}$")]
AttributeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
AttributeValue = Annotated[Line, Field(max_length=500)] | int | bool | None
ActivityType = Literal["payment", "refund", "task_completed", "signup", "custom"]
MAX_BATCH = 1_000


class ActivityIn(BaseModel):
    """A business fact. ``id`` is the sender's own and its idempotency key: the same id again
    answers the first outcome; the same id with another body is a 409."""

    model_config = ConfigDict(extra="forbid")

    id: SenderId
    type: ActivityType
    occurred_at: AwareDatetime
    customer: SenderId = Field(description="the customer's user id on this platform")
    merchant: SenderId | None = Field(None, description="the merchant's id on this platform")
    staff: SenderId | None = Field(None, description="the merchant staff member's user id")
    amount_fen: Fen | None = Field(None, description="a payment's or refund's amount")
    refers_to: SenderId | None = Field(
        None, description="a refund's payment: the id this sender gave it"
    )
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict,
        max_length=50,
        description="anything else the sender knows (e.g. merchant_category, task_code)",
    )

    @model_validator(mode="after")
    def _complete(self) -> ActivityIn:
        if self.type in ("payment", "refund"):
            if self.amount_fen is None or self.amount_fen < 1:
                raise ValueError(f"a {self.type} needs amount_fen of at least 1")
            if self.merchant is None:
                raise ValueError(f"a {self.type} needs a merchant")
        if (self.type == "refund") != (self.refers_to is not None):
            raise ValueError("refers_to is given for a refund, and only for a refund")
        return self


class ActivityBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activities: list[ActivityIn] = Field(min_length=1, max_length=MAX_BATCH)


class OutcomeOut(BaseModel):
    campaign_id: str
    kind: str
    status: Literal["rewarded", "reversed", "refused"]
    reason: str | None
    detail: dict[str, Any] | None
    decided_at: datetime


class ActivityOut(BaseModel):
    id: str = Field(description="the sender's id")
    type: str
    occurred_at: datetime
    customer: str
    merchant: str | None
    staff: str | None
    amount_fen: int | None
    refers_to: str | None
    attributes: dict[str, Any]
    state: Literal["received", "evaluated"] = Field(
        description="received: queued for evaluation; evaluated: every campaign answered"
    )
    received_at: datetime
    evaluated_at: datetime | None
    outcomes: list[OutcomeOut]


class ActivityBatchOut(BaseModel):
    activities: list[ActivityOut]


class ActivityPage(Page[ActivityOut]):
    pass
