"""The ``referral`` campaign kind: its rules (invites and rewards come with their issue)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from incentive.campaigns.kinds import CampaignKind, KindRules, register_kind
from incentive.kit.amounts import Count, Points
from incentive.kit.text import Line


class ReferralRules(KindRules):
    kind: Literal["referral"] = "referral"
    referrer_reward_points: Points
    referee_reward_points: Points = 0
    max_referrals_per_user: Count
    business_action: Line = Field("first_payment", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _something_rewarded(self) -> ReferralRules:
        if self.referrer_reward_points + self.referee_reward_points == 0:
            raise ValueError("referrer or referee reward points must be above 0")
        return self


class ReferralKind(CampaignKind):
    name = "referral"
    rules = ReferralRules

    def budget_asset(self, rules: KindRules) -> str:
        return "POINTS"


register_kind(ReferralKind())
