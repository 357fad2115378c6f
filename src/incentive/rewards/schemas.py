"""Reward request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from incentive.kit.amounts import MAX_COUNT, Code
from incentive.kit.pagination import Page

UserType = Literal["first_time", "returning"]
SkipReason = Literal[
    "out-of-stock", "budget-exhausted", "limit-reached", "audience", "delivery-failed"
]


class StepOut(BaseModel):
    """One reward of the chain as the grant walked it."""

    code: str
    result: Literal["given", "skipped", "failed"]
    reason: SkipReason | None = None


class GrantOut(BaseModel):
    id: str
    campaign_id: str
    customer_id: str
    user_type: UserType
    reward: str | None = Field(description="the reward held (None: every delivery failed)")
    type: Literal["points", "cash", "coupon", "benefit"] | None
    delivery: Literal["ledger", "coupon_wallet", "third_party", "message"] | None
    amount: int
    state: Literal["granted", "delivering", "delivered", "failed"] = Field(
        description="granted: delivered now; delivering: a provider or the message webhook "
        "still to answer; failed: every reward after a failed delivery was tried"
    )
    delivery_ref: str | None = Field(
        description="the ledger transfer id, the coupon id (see /me/coupons) or the message id"
    )
    chain: list[StepOut]
    created_at: datetime


class GrantPage(Page[GrantOut]):
    pass


class RewardOut(BaseModel):
    code: str
    position: int
    title: str | None
    type: str
    delivery: str
    amount: int
    audience: str
    per_user_limit: int | None
    batch_id: str | None
    stock_total: int = Field(description="every unit ever given to this reward")
    held: int | None = Field(None, description="units held by grants (operators, owner)")
    left: int | None = Field(description="units left now in the stock store (None: rebuilding)")
    low_stock_threshold: int | None
    low_since: datetime | None
    retired_at: datetime | None


class ChainOut(BaseModel):
    campaign_id: str
    rewards: list[RewardOut]


class RestockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    units: Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    codes: list[Code] = Field(min_length=1, max_length=100)


class ReportRowOut(BaseModel):
    day: str
    reward: str | None
    user_type: UserType
    given: int
    amount: int
    with_fallback: int = Field(description="grants that skipped at least one reward")
    fallbacks: int = Field(description="rewards skipped in all")


class ReportOut(BaseModel):
    campaign_id: str
    rows: list[ReportRowOut]


class RebuiltOut(BaseModel):
    code: str
    total: int
    held: int
    before: list[int] | None
    after: list[int]


class ReconcileOut(BaseModel):
    campaign_id: str
    rewards: list[RebuiltOut]
