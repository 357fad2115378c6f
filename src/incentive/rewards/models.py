"""Tables of reward campaigns.

The campaign row holds what the reviewer approved; ``reward_items`` holds the live chain
written from it at the first activation, which operators then change (add, reorder, restock,
retire; audited). The stock engine holds each item's units; the database is the truth they
are rebuilt from: ``stock_total`` (every unit ever given to the item) minus the grants that
hold it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow


class RewardItem(Base):
    """One reward of a campaign's live chain (``position`` orders the fallback)."""

    __tablename__ = "reward_items"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str | None] = mapped_column(String(200), nullable=True)
    type: Mapped[str] = mapped_column(String(16))
    delivery: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    audience: Mapped[str] = mapped_column(String(16), default="any")
    per_user_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: every unit ever given to this reward (its first stock plus restocks)
    stock_total: Mapped[int] = mapped_column(BigInteger)
    low_stock_threshold: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: set when the low-stock alert fired; cleared by a restock above the threshold
    low_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    buckets: Mapped[int] = mapped_column(Integer)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RewardGrant(Base):
    """One reward given to one customer for one trigger, with the chain walked to get it.

    ``trigger_key`` makes a trigger count once: ``claim:<Idempotency-Key>`` for the
    customer's own claim, ``activity:<id>`` for an activity. ``reward_code`` is the reward
    the grant holds now (it moves down the chain when a delivery fails for good; None once
    nothing was left). ``chain`` lists every step: ``{"code", "result": "given"|"skipped",
    "reason"}``.
    """

    __tablename__ = "reward_grants"
    __table_args__ = (
        UniqueConstraint("campaign_id", "customer_id", "trigger_key"),
        Index("ix_reward_grants_customer_id_created_at", "customer_id", "created_at"),
        Index("ix_reward_grants_campaign_id_reward_code", "campaign_id", "reward_code"),
        Index("ix_reward_grants_delivery_ref", "delivery_ref"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    customer_id: Mapped[str] = mapped_column(String(64))
    trigger_key: Mapped[str] = mapped_column(String(220))
    user_type: Mapped[str] = mapped_column(String(16))
    reward_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    delivery: Mapped[str | None] = mapped_column(String(16), nullable=True)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    #: granted (delivered now) | delivering (a provider or a webhook still to answer) |
    #: delivered | failed (every reward after a failed delivery was tried)
    state: Mapped[str] = mapped_column(String(16))
    #: the ledger transfer, the coupon or the message that carries the reward
    delivery_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    takes: Mapped[list[Any]] = mapped_column(JSON)
    chain: Mapped[list[Any]] = mapped_column(JSON)
    fallbacks: Mapped[int] = mapped_column(Integer, default=0)
    day: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RewardHolding(Base):
    """How many rewards a customer got from a campaign (its per-customer limit, and the
    user type: the first is a first-time participant's)."""

    __tablename__ = "reward_holdings"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted: Mapped[int] = mapped_column(BigInteger)


class RewardParticipant(Base):
    """Rewards a customer got from any campaign of a participant group (first-time across
    the group)."""

    __tablename__ = "reward_participants"

    participant_group: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted: Mapped[int] = mapped_column(BigInteger)
