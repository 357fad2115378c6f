"""The rules of a ``referral`` campaign (what the reviewer approves).

A referrer (a customer, or merchant staff when the rules allow) invites a referee; the
referee accepts within ``attribution_days`` of the invite (by signing up with it, explicitly,
or through a partner's ``signup`` activity); the referral is completed when the referee does
the **business** (an activity of ``business.activity_type`` of at least
``business.min_amount_fen`` within ``business.within_days`` of accepting); then the referrer
and, optionally, the referee are rewarded — points or cash from the campaign's budget (its
asset must match), or a coupon of a batch — after ``hold_days`` in escrow, voided by a refund
first when ``void_on_refund``. Multi-level attribution (the referrer's own referrer, up to 3
levels, each paid a rate of the referrer's reward) is off unless switched on.

The first three fields of the original rules (``referrer_reward_points``,
``referee_reward_points``, ``max_referrals_per_user``) keep their meaning: points rewards, and
the cap of accepted referrals per referrer in the campaign.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from incentive.campaigns.kinds import CampaignFacts, KindRules
from incentive.kit.amounts import MAX_FEN, BasisPoints, Count, Fen, Points
from incentive.kit.text import Line, Prose

MAX_LEVELS = 3
#: the activity types a referee's business may be
BUSINESS_TYPES = ("payment", "task_completed", "custom")
ASSET_OF = {"points": "POINTS", "cash": "CNY"}
Role = Literal["customer", "merchant"]
Days = Annotated[int, Field(strict=True, ge=0, le=3650)]


class RewardSpec(BaseModel):
    """One side's reward: ``points`` or ``cash`` (fen) paid from the campaign's budget, or one
    coupon of ``coupon_batch_id`` (given through the coupons domain)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["points", "cash", "coupon"]
    amount: Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)] = Field(
        0, description="points for type points, fen for type cash; 0 for a coupon"
    )
    coupon_batch_id: str | None = Field(
        None, pattern=r"^[0-9a-f]{32}$", description="the batch a coupon reward comes from"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RewardSpec:
        if self.type in ASSET_OF and self.amount < 1:
            raise ValueError(f"a {self.type} reward needs an amount above 0")
        if (self.type == "coupon") != (self.coupon_batch_id is not None):
            raise ValueError("coupon_batch_id is required for a coupon reward, and only for it")
        if self.type == "coupon" and self.amount:
            raise ValueError("a coupon reward has no amount")
        return self


class RefereeBusiness(BaseModel):
    """What the referee must do to complete the referral."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activity_type: Literal["payment", "task_completed", "custom"] = "payment"
    min_amount_fen: Fen = Field(0, description="a payment counts from this amount")
    within_days: Annotated[int, Field(strict=True, ge=1, le=365)] = Field(
        30, description="days after accepting the invite the business must happen within"
    )


class MultiLevel(BaseModel):
    """Attribution beyond the direct referrer: level 1 is the referrer, level 2 the referrer's
    own referrer (in the same campaign, as fixed when the referrer accepted), level 3 theirs.
    Level ``k`` is paid ``floor(referrer reward × rates_bp[k - 1] / 10,000)`` (a level whose
    share rounds to 0 is not paid), so the number of rates is the number of levels, and the
    referrer's own rate is usually 10,000. Off: only the referrer (and the referee) are paid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: StrictBool = False
    rates_bp: list[BasisPoints] = Field(
        default_factory=list,
        max_length=MAX_LEVELS,
        validate_default=True,
        description="one rate per level, level 1 (the referrer) first; at most 3",
    )

    @field_validator("rates_bp")
    @classmethod
    def _rates(cls, rates: list[int], info: ValidationInfo) -> list[int]:
        if info.data.get("enabled") and not rates:
            raise ValueError("multi-level attribution needs one rate per level (1 to 3)")
        if not info.data.get("enabled") and rates:
            raise ValueError("rates are given only when multi-level attribution is enabled")
        if any(r < 1 for r in rates):
            raise ValueError("each level's rate is at least 1 basis point")
        return rates


class ReferralRules(KindRules):
    kind: Literal["referral"] = "referral"
    task_title: Annotated[Line, Field(max_length=100)] = Field(
        "Invite a friend", description="the referrer task's title"
    )
    task_description: Annotated[Prose, Field(max_length=2000)] = ""
    # -- who may refer
    referrer_roles: list[Role] = Field(
        default_factory=lambda: list[Role](["customer"]),
        min_length=1,
        max_length=2,
        description="who may invite: customers, and/or staff of the campaign's merchant (any "
        "merchant's staff for a platform campaign)",
    )
    min_account_age_days: Days = Field(0, description="a referrer's account is at least this old")
    max_referrals_per_user: Count = Field(description="accepted referrals per referrer")
    max_referrals_per_day: Count | None = Field(
        None, description="accepted referrals per referrer per UTC day (unset: no daily cap)"
    )
    # -- what the referee must do
    business_action: Line = Field(
        "first_payment", min_length=1, max_length=64, description="a label of the business"
    )
    business: RefereeBusiness = Field(default_factory=RefereeBusiness)
    # -- rewards
    budget_asset: Literal["POINTS", "CNY"] = "POINTS"
    referrer_reward_points: Points = 0
    referee_reward_points: Points = 0
    referrer_reward: RewardSpec | None = Field(
        None, description="instead of referrer_reward_points: points, cash or a coupon"
    )
    referee_reward: RewardSpec | None = Field(
        None, description="instead of referee_reward_points: points, cash or a coupon"
    )
    hold_days: Annotated[int, Field(strict=True, ge=0, le=90)] = Field(
        0, description="days a reward is held (pending) before it is paid"
    )
    void_on_refund: StrictBool = Field(
        True,
        description="a refund during the hold that leaves the payment below "
        "business.min_amount_fen (or at 0) voids the rewards",
    )
    # -- attribution
    attribution_days: Annotated[int, Field(strict=True, ge=1, le=365)] = Field(
        7, description="an invite can be accepted for this many days after it was made"
    )
    multi_level: MultiLevel = Field(default_factory=MultiLevel)

    @field_validator("referrer_reward_points", "referee_reward_points")
    @classmethod
    def _points_need_points_budget(cls, points: int, info: ValidationInfo) -> int:
        if points and info.data.get("budget_asset", "POINTS") != "POINTS":
            raise ValueError("points rewards need budget_asset POINTS")
        return points

    @field_validator("referrer_reward", "referee_reward")
    @classmethod
    def _one_reward(cls, spec: RewardSpec | None, info: ValidationInfo) -> RewardSpec | None:
        if spec is None:
            return None
        side = str(info.field_name).split("_")[0]
        if info.data.get(f"{side}_reward_points"):
            raise ValueError(f"give {side}_reward or {side}_reward_points, not both")
        asset = ASSET_OF.get(spec.type)
        budget = info.data.get("budget_asset", "POINTS")
        if asset is not None and asset != budget:
            raise ValueError(f"a {spec.type} reward pays {asset} but budget_asset is {budget}")
        return spec

    @field_validator("referrer_roles")
    @classmethod
    def _unique_roles(cls, roles: list[str]) -> list[str]:
        if len(set(roles)) != len(roles):
            raise ValueError("roles must be unique")
        return roles

    @model_validator(mode="after")
    def _something_rewarded(self) -> ReferralRules:
        if self.reward("referrer") is None and self.reward("referee") is None:
            raise ValueError("the referrer or the referee must be rewarded")
        if self.multi_level.enabled:
            spec = self.reward("referrer")
            if spec is None or spec.type == "coupon":
                raise ValueError(
                    "multi-level attribution shares the referrer's points or cash reward: "
                    "give referrer_reward_points or a points or cash referrer_reward"
                )
        return self

    def reward(self, side: Literal["referrer", "referee"]) -> RewardSpec | None:
        """The side's reward (``<side>_reward``, else its points), None if it gets nothing."""
        spec: RewardSpec | None = getattr(self, f"{side}_reward")
        points: int = getattr(self, f"{side}_reward_points")
        if spec is None and points:
            spec = RewardSpec(type="points", amount=points)
        return spec


def referral_rules(campaign: CampaignFacts) -> ReferralRules:
    rules = campaign.rules
    assert isinstance(rules, ReferralRules), f"campaign {campaign.id} is not a referral campaign"
    return rules
