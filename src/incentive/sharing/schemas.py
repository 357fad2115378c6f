"""Sharing request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from incentive.kit.pagination import Page
from incentive.sharing.models import CHANNELS

Channel = Literal["wechat", "moments", "weibo", "qq", "douyin", "sms", "email", "link", "other"]
assert set(get_args(Channel)) == set(CHANNELS)
ConversionType = Literal["payment", "task_completed", "signup", "custom", "claim", "purchase"]
CouponRefusal = Literal[
    "no-coupon-configured",
    "not-a-customer",
    "sharer-limit-reached",
    "limit-reached",
    "out-of-stock",
    "batch-closed",
    "batch-missing",
]

MAX_ATTRIBUTION_HOURS = 720
MAX_COUPONS_PER_SHARER = 100


class SharingSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(description="whether the campaign may be shared once it is active")
    coupon_batch_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="a coupon batch of a campaign of the same owner: each customer who shares "
        "gets one of its coupons (null: no sharer coupon)",
    )
    coupons_per_sharer: int = Field(
        default=1,
        ge=1,
        le=MAX_COUPONS_PER_SHARER,
        description="sharer coupons one sharer may get from this campaign",
    )
    attribution_hours: int = Field(
        default=72,
        ge=1,
        le=MAX_ATTRIBUTION_HOURS,
        description="an activity converts for the share its customer last visited within "
        "this many hours before it",
    )
    conversion_types: list[ConversionType] = Field(
        default_factory=lambda: list[ConversionType](["payment"]),
        min_length=1,
        max_length=6,
        description="activity types that count as conversions, and what customers do here: "
        "`claim` (a coupon of the campaign) and `purchase` (of the flash sale)",
    )

    @field_validator("conversion_types")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each type at most once")
        return value


class SharingSettingsOut(BaseModel):
    campaign_id: str
    enabled: bool
    coupon_batch_id: str | None
    coupons_per_sharer: int
    attribution_hours: int
    conversion_types: list[str]
    updated_at: datetime | None = Field(description="null: never set (the defaults)")


class ShareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel = Field(description="where the link is shared")


class ShareOut(BaseModel):
    id: str
    token: str = Field(description="the share's public name (<= 32 URL-safe characters)")
    campaign_id: str
    sharer_id: str
    channel: str
    link: str = Field(description="the link to share: `/s/{token}` on the public base URL")
    qr: str = Field(description="a QR code of the link (`?format=png|svg`)")
    coupon_id: str | None = Field(description="the sharer's coupon given with this share")
    coupon_refusal: CouponRefusal | None = Field(
        description="why no coupon came with this share (null when one came)"
    )
    created_at: datetime


class SharePage(Page[ShareOut]):
    pass


class ChannelStats(BaseModel):
    channel: str
    shares: int
    visits: int
    unique_visitors: int
    conversions: int
    coupons: int


class ShareStatsOut(BaseModel):
    campaign_id: str
    shares: int
    visits: int = Field(description="visits, one per visitor, share and day")
    unique_visitors: int = Field(description="distinct visitors of any share of the campaign")
    conversions: int
    coupons: int = Field(description="sharer coupons given")
    channels: list[ChannelStats]


class SharerStats(BaseModel):
    sharer_id: str
    sharer_role: str
    shares: int
    visits: int
    unique_visitors: int
    conversions: int
    coupons: int


class SharerStatsPage(Page[SharerStats]):
    pass
