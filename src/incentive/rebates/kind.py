"""The ``rebate`` campaign kind: its rules (paying on payments comes with the activities)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from incentive.campaigns.kinds import CampaignKind, KindRules, register_kind
from incentive.kit.amounts import BasisPoints, Fen, PositiveFen


class RebateRules(KindRules):
    """Two-way rebate on a payment: the user and the merchant are both paid from the budget."""

    kind: Literal["rebate"] = "rebate"
    user_rebate_bp: BasisPoints
    merchant_rebate_bp: BasisPoints
    staff_rebate_bp: BasisPoints = 0
    min_payment_fen: Fen = 0
    max_rebate_fen: PositiveFen = Field(description="cap of one payment's total rebate, fen")

    @model_validator(mode="after")
    def _something_rebated(self) -> RebateRules:
        if self.user_rebate_bp + self.merchant_rebate_bp + self.staff_rebate_bp == 0:
            raise ValueError("at least one of the rebate rates must be above 0")
        return self


class RebateKind(CampaignKind):
    name = "rebate"
    rules = RebateRules

    def budget_asset(self, rules: KindRules) -> str:
        return "CNY"


register_kind(RebateKind())
