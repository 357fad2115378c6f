"""Sharing tables: each campaign's sharing settings, the shares, their visits (one row per
share, visitor and day), the share each customer last visited per campaign (attribution),
conversions (one per activity and campaign), and per-sharer counters (the sharer-coupon
limit's atomic count)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow

CHANNELS = ("wechat", "moments", "weibo", "qq", "douyin", "sms", "email", "link", "other")


class SharingSettings(Base):
    """How a campaign is shared: set by its manager while it is a draft or rejected, so what
    the reviewer approved is what runs."""

    __tablename__ = "sharing_settings"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=False)
    #: the coupon batch a sharer gets a coupon of (None: no sharer coupon)
    coupon_batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    coupons_per_sharer: Mapped[int] = mapped_column(BigInteger, default=1)
    attribution_hours: Mapped[int] = mapped_column(BigInteger, default=72)
    #: activity types that count as conversions
    conversion_types: Mapped[list[Any]] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Share(Base):
    """One share of a campaign by one user on one channel; ``token`` is its public name."""

    __tablename__ = "shares"
    __table_args__ = (
        Index("ix_shares_campaign_channel", "campaign_id", "channel"),
        Index("ix_shares_sharer_created", "sharer_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    sharer_id: Mapped[str] = mapped_column(String(32))
    sharer_role: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    #: the sharer's coupon given with this share, or why none (``coupon_refusal``)
    coupon_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    coupon_refusal: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ShareSharer(Base):
    """What one sharer did for one campaign: shares made and sharer coupons given (the
    coupon count grows only below the settings' limit, in one conditional statement)."""

    __tablename__ = "share_sharers"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    sharer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sharer_role: Mapped[str] = mapped_column(String(16))
    shares: Mapped[int] = mapped_column(BigInteger)
    coupons: Mapped[int] = mapped_column(BigInteger)


class ShareVisit(Base):
    """A visitor's visits of a share on one UTC day: the primary key deduplicates them."""

    __tablename__ = "share_visits"
    __table_args__ = (Index("ix_share_visits_campaign_visitor", "campaign_id", "visitor"),)

    share_id: Mapped[str] = mapped_column(ForeignKey("shares.id"), primary_key=True)
    visitor: Mapped[str] = mapped_column(String(80), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(32))
    sharer_id: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    visited_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ShareTouch(Base):
    """The share a signed-in customer last visited for a campaign (last share wins)."""

    __tablename__ = "share_touches"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    share_id: Mapped[str] = mapped_column(ForeignKey("shares.id"))
    visited_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ShareConversion(Base):
    """An activity, or a customer's action here (a coupon claim), attributed to a share: one
    per (source, ref, campaign) — ``activity`` and the activity's id, or ``claim`` and the
    coupon's id."""

    __tablename__ = "share_conversions"
    __table_args__ = (Index("ix_share_conversions_campaign_sharer", "campaign_id", "sharer_id"),)

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    share_id: Mapped[str] = mapped_column(ForeignKey("shares.id"))
    sharer_id: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    #: visit (the last share visited within the window) | token (``attributes.share``)
    via: Mapped[str] = mapped_column(String(8))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
