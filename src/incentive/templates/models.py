"""Campaign templates: one row per version of a template (``key``, ``version``).

A version is edited while ``draft``; once ``published`` its fields never change (campaigns
made from it name it); ``retired`` takes it out of use for new campaigns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, utcnow

TEMPLATE_STATUSES = ("draft", "published", "retired")


class CampaignTemplate(Base):
    __tablename__ = "campaign_templates"
    __table_args__ = (
        UniqueConstraint("key", "version", name="uq_campaign_templates_key_version"),
        CheckConstraint(
            "status IN ('draft', 'published', 'retired')", name="template_status_known"
        ),
        CheckConstraint("version >= 1", name="template_version_positive"),
        Index("ix_campaign_templates_listing", "status", "key", "version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="draft")
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
