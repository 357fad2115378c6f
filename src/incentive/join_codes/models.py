"""Join-code tables: single-use codes an operator generates for a campaign, and the merchants
that joined a campaign by redeeming one.

A code changes state only by one conditional UPDATE from ``unused`` (``service.redeem`` to
``used``, ``service.void`` to ``void``); a merchant joins a campaign at most once (the primary
key of ``campaign_merchants``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow

CODE_STATUSES = ("unused", "used", "void")
CODE_MAX_LENGTH = 32


class JoinCode(Base):
    __tablename__ = "join_codes"
    __table_args__ = (
        CheckConstraint("status IN ('unused', 'used', 'void')", name="status_known"),
        CheckConstraint(
            "status <> 'used' OR (redeemed_by_merchant_id IS NOT NULL AND redeemed_at IS NOT NULL)",
            name="used_has_redeemer",
        ),
        # A campaign's codes in code order (listing, export, voiding the unused ones); its
        # used and void ones (listing them) in a partial index that new codes stay out of.
        Index("ix_join_codes_campaign_code", "campaign_id", "code"),
        Index(
            "ix_join_codes_campaign_spent",
            "campaign_id",
            "status",
            "code",
            postgresql_where=text("status <> 'unused'"),
            sqlite_where=text("status <> 'unused'"),
        ),
    )

    code: Mapped[str] = mapped_column(String(CODE_MAX_LENGTH), primary_key=True)
    # The campaign's id, checked by the service when codes are generated; no database
    # foreign key, so that a million codes are written without a million key checks.
    campaign_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(8), default="unused")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    redeemed_by_merchant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    redeemed_by_user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    voided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CampaignMerchant(Base):
    """A merchant that joined a campaign, with the code it redeemed."""

    __tablename__ = "campaign_merchants"
    __table_args__ = (
        Index("ix_campaign_merchants_joined", "campaign_id", "joined_at", "merchant_id"),
    )

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), primary_key=True)
    code: Mapped[str] = mapped_column(ForeignKey("join_codes.code"), unique=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    joined_by: Mapped[str] = mapped_column(String(32))
