"""The rules of a ``rebate`` campaign (what the reviewer approves)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from incentive.campaigns.kinds import KindRules
from incentive.kit.amounts import BasisPoints, Code, Fen, PositiveFen


class RebateRules(KindRules):
    """Two-way rebate on a payment: the user and the merchant are both paid from the budget.

    Caps are on what one party is paid (its part of each rebate); a part is cut to what its
    caps leave, and a payment whose every part is cut to nothing is refused `cap-reached`.
    """

    kind: Literal["rebate"] = "rebate"
    user_rebate_bp: BasisPoints
    merchant_rebate_bp: BasisPoints
    staff_rebate_bp: BasisPoints = 0
    min_payment_fen: Fen = 0
    max_rebate_fen: PositiveFen = Field(description="cap of one payment's total rebate, fen")
    customer_daily_cap_fen: PositiveFen | None = None
    customer_campaign_cap_fen: PositiveFen | None = None
    merchant_daily_cap_fen: PositiveFen | None = None
    merchant_campaign_cap_fen: PositiveFen | None = None
    merchant_categories: list[Code] = Field(
        default_factory=list,
        max_length=200,
        description="eligible merchant categories (the payment's "
        "`attributes.merchant_category`); empty: every category",
    )
    cap_day_offset_minutes: Annotated[int, Field(strict=True, ge=-720, le=840)] = Field(
        480, description="where the daily caps' day starts: minutes east of UTC (480: UTC+8)"
    )

    @model_validator(mode="after")
    def _something_rebated(self) -> RebateRules:
        if self.user_rebate_bp + self.merchant_rebate_bp + self.staff_rebate_bp == 0:
            raise ValueError("at least one of the rebate rates must be above 0")
        return self
