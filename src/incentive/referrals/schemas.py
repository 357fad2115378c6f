"""Request and response shapes of referrals."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from incentive.kit.pagination import Page
from incentive.kit.text import Line
from incentive.referrals.rules import RewardSpec

Hash = Line


class EvidenceIn(BaseModel):
    """What the client knows of the person acting (each kept only as a peppered hash)."""

    model_config = ConfigDict(extra="forbid")

    device_id: Line | None = Field(None, min_length=1, max_length=200)
    payment_instrument_hash: Hash | None = Field(
        None,
        min_length=8,
        max_length=128,
        pattern=r"^[A-Za-z0-9+/=_-]{8,128}$",
        description="the client's hash of the payment instrument (card, wallet) used",
    )


class InviteOut(BaseModel):
    id: str
    token: str
    campaign_id: str
    link: str = Field(description="the link a referee opens: `{public base}/i/{token}`")
    qr: str = Field(description="the QR code of the link (PNG or SVG)")
    created_at: datetime
    expires_at: datetime = Field(description="the invite can be accepted until then")


class InvitePage(Page[InviteOut]):
    pass


class ReferralCampaignOut(BaseModel):
    campaign_id: str
    name: str
    task_title: str
    task_description: str
    ends_at: datetime
    referrer_reward: RewardSpec | None
    referee_reward: RewardSpec | None
    attribution_days: int
    max_referrals_per_user: int
    max_referrals_per_day: int | None


class ReferralCampaignPage(Page[ReferralCampaignOut]):
    pass


ReferralState = Literal[
    "accepted", "rejected", "completed", "pending", "rewarded", "voided", "expired"
]
RewardState = Literal["pending", "paid", "voided", "unpaid"]


class RewardOut(BaseModel):
    """One payee's reward of a completed referral."""

    id: str
    referral_id: str
    campaign_id: str
    side: Literal["referrer", "referee"]
    level: int = Field(description="0 the referee, 1 the referrer, 2-3 the referrer's referrers")
    type: Literal["points", "cash", "coupon"]
    amount: int = Field(description="points, or fen for cash; 0 for a coupon")
    coupon_batch_id: str | None
    coupon_id: str | None = Field(description="the coupon given, once paid")
    state: RewardState = Field(
        description="pending (held until the referral's release_at), paid, voided (refunded in "
        "the hold) or unpaid (reason: budget-exhausted, out-of-stock, limit-reached, …)"
    )
    reason: str | None
    created_at: datetime
    updated_at: datetime


class RewardPage(Page[RewardOut]):
    pass


class ReferralOut(BaseModel):
    id: str
    campaign_id: str
    invite_id: str
    referee: str = Field(description="the referee's shown name")
    state: ReferralState = Field(
        description="accepted (waiting for the referee's business), rejected (reason), "
        "completed (business done, nothing could be paid: reason), pending (rewards held until "
        "release_at), rewarded, voided (refunded in the hold), expired (business window passed)"
    )
    reason: str | None = Field(
        description="why rejected (self-referral, existing-account, ring, already-referred, "
        "referrer-cap, address-burst), voided (refunded), expired (business-window-passed) or "
        "completed unpaid (budget-exhausted)"
    )
    via: Literal["signup", "acceptance", "activity"]
    created_at: datetime
    business_due_at: datetime | None = Field(description="the business must happen by then")
    completed_at: datetime | None
    release_at: datetime | None = Field(description="held rewards are paid then")
    reward: RewardOut | None = Field(description="the referrer's own reward, once completed")


class ReferralPage(Page[ReferralOut]):
    pass


class CampaignReferralOut(ReferralOut):
    referrer_id: str
    referee_id: str
    completed_by: str | None = Field(description="our id of the activity that completed it")
    business_amount_fen: int | None
    refunded_fen: int


class CampaignReferralPage(Page[CampaignReferralOut]):
    pass


class RewardLineOut(BaseModel):
    side: Literal["referrer", "referee"]
    level: int
    type: Literal["points", "cash", "coupon"]
    state: RewardState
    count: int
    amount: int = Field(description="their total: points, or fen for cash")


class ReferralReport(BaseModel):
    campaign_id: str
    invites: int
    referrals: dict[str, int] = Field(description="referrals by state")
    rejected: dict[str, int] = Field(description="rejected referrals by reason")
    rewards: list[RewardLineOut] = Field(description="by side, level, type and state")
    asset: Literal["POINTS", "CNY"]
    budget_left: int
    escrow_held: int = Field(description="points or cash held for pending rewards")
