from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from incentive.kit.pagination import Page


class PartsOut(BaseModel):
    user: int
    merchant: int
    staff: int


class RebateOut(BaseModel):
    """One rebated payment of a campaign."""

    payment_id: str = Field(description="the sender's id of the payment")
    customer: str
    merchant: str
    staff: str | None
    payment_fen: int
    paid: PartsOut
    refunded_fen: int
    reversed: PartsOut
    shortfall_fen: int = Field(description="reversal owed that the balances could not cover")
    paid_at: datetime


class RebatePage(Page[RebateOut]):
    pass


class RebateReport(BaseModel):
    campaign_id: str
    payments_evaluated: int = Field(description="payments this campaign answered")
    payments_rebated: int
    refused: dict[str, int] = Field(description="payments refused, by reason")
    refunds_reversed: int
    paid: PartsOut
    reversed: PartsOut
    refunded_fen: int
    shortfall_fen: int
    budget_spent_fen: int = Field(description="paid minus what reversals took back")
    budget_left_fen: int
