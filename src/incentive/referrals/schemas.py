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


class ReferralOut(BaseModel):
    id: str
    campaign_id: str
    invite_id: str
    referee: str = Field(description="the referee's shown name")
    state: Literal["accepted", "rejected"]
    reason: str | None = Field(
        description="why rejected: referrer-ineligible, self-referral, ring, already-referred, "
        "existing-account, referrer-cap, address-burst (referrer-ineligible, referrer-cap and "
        "address-burst pass: accepting the invite again checks again)"
    )
    via: Literal["signup", "acceptance", "activity"]
    created_at: datetime


class ReferralPage(Page[ReferralOut]):
    pass
