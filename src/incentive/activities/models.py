"""Activity tables: what senders reported (``activities``) and each campaign's answer
(``activity_outcomes``, one row per activity and campaign)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime

TYPES = ("payment", "refund", "task_completed", "signup", "custom")
# received: stored, offered to no campaign yet (queued for a worker); evaluated: every
# campaign it was offered to has answered.
STATES = ("received", "evaluated")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Activity(Base):
    """One business fact as its sender reported it. ``(sender, external_id)`` is unique: the
    sender's id is the idempotency key, and ``fingerprint`` (of the body as sent) tells a
    retry from a different activity reusing an id."""

    __tablename__ = "activities"
    __table_args__ = (
        UniqueConstraint("sender", "external_id", name="uq_activities_sender_id"),
        CheckConstraint(_in("type", TYPES), name="type_known"),
        CheckConstraint(_in("state", STATES), name="state_known"),
        Index("ix_activities_customer", "customer", "id"),
        Index("ix_activities_received", "state", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(80))  # role:id of who sent it
    external_id: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    customer: Mapped[str] = mapped_column(String(64))
    merchant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    staff: Mapped[str | None] = mapped_column(String(64), nullable=True)
    amount_fen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refers_to: Mapped[int | None] = mapped_column(ForeignKey("activities.id"), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ActivityOutcome(Base):
    """A campaign's answer to an activity, written once: the primary key is the guard that
    makes a campaign answer each activity exactly once however often it is offered."""

    __tablename__ = "activity_outcomes"
    __table_args__ = (
        CheckConstraint("status IN ('rewarded', 'reversed', 'refused')", name="status_known"),
        Index("ix_activity_outcomes_campaign", "campaign_id", "status", "reason"),
    )

    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
