"""Campaign tables: the entity every campaign kind shares, and its status history.

A campaign's status changes only through ``campaigns.flows.transition`` (one conditional
UPDATE per change), which also writes the ``CampaignTransition`` row explaining it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, new_id, utcnow

STATUSES = (
    "draft",
    "pending_review",
    "approved",
    "rejected",
    "active",
    "paused",
    "ended",
    "cancelled",
)
OWNER_TYPES = ("operator", "merchant")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="ends_after_starts"),
        CheckConstraint(_in("status", STATUSES), name="status_known"),
        CheckConstraint(_in("owner_type", OWNER_TYPES), name="owner_type_known"),
        CheckConstraint(
            "owner_type <> 'merchant' OR merchant_id IS NOT NULL", name="merchant_owner_set"
        ),
        CheckConstraint("version >= 1", name="version_positive"),
        Index("ix_campaigns_status_kind", "status", "kind"),
        Index("ix_campaigns_merchant_status", "merchant_id", "status"),
        Index("ix_campaigns_listing", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    owner_type: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    budget_account_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("accounts.id"), nullable=True
    )
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Made from a template: its key and version, and the content its fields define.
    template_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    template_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CampaignTransition(Base):
    """One status change: who moved the campaign from what to what, when and why.

    Creation is recorded too, as a change from ``None`` to ``draft``.
    """

    __tablename__ = "campaign_transitions"
    __table_args__ = (Index("ix_campaign_transitions_history", "campaign_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(32))
    actor_role: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
