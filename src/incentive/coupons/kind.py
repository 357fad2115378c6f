"""The ``coupon`` campaign kind: its rules (the wallet and providers come with their issue)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from incentive.campaigns.kinds import CampaignKind, KindRules, register_kind
from incentive.kit.amounts import Count, Fen, PositiveFen


class CouponRules(KindRules):
    kind: Literal["coupon"] = "coupon"
    face_value_fen: PositiveFen
    min_spend_fen: Fen = 0
    quantity: Count
    per_user_limit: Count = 1
    valid_days: Annotated[int, Field(strict=True, ge=1, le=3650)] = 30

    @model_validator(mode="after")
    def _limit_fits(self) -> CouponRules:
        if self.per_user_limit > self.quantity:
            raise ValueError("per_user_limit cannot exceed quantity")
        return self


class CouponKind(CampaignKind):
    name = "coupon"
    rules = CouponRules

    def budget_asset(self, rules: KindRules) -> str:
        return "CNY"


register_kind(CouponKind())
