"""Coupon tables: providers, batches (ours and synced from providers), the coupons in
customers' wallets with every state change, redemptions at the till, and the calls to
providers waiting to leave.

A coupon changes state only by one conditional ``UPDATE … WHERE state IN (…)``, each
followed by its ``CouponTransition`` row; a batch's stock only by one conditional
``UPDATE … SET stock = stock - 1 WHERE stock >= 1``; a customer's count per batch only by
one ``INSERT … ON CONFLICT DO UPDATE … WHERE claimed < :limit``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, utcnow

#: received: locked until the task is done; activating/unknown: the provider is being asked
#: (unknown: an answer was unclear, the provider is queried before any retry); held: the
#: till's short lock between prepare and commit.
STATES = (
    "received",
    "activating",
    "unknown",
    "usable",
    "held",
    "redeemed",
    "expired",
    "failed",
    "revoked",
)
PROVIDER_STATES = ("running", "paused", "stopped", "exhausted")
CALL_ACTIONS = ("issue", "redeem", "reverse", "revoke")
CALL_STATES = ("pending", "in_flight", "done", "failed")
CODE_MAX_LENGTH = 32


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class CouponProvider(Base):
    """A third party that issues coupons: where to call it, its credentials, and the secret
    its webhooks are signed with (never shown back)."""

    __tablename__ = "coupon_providers"
    __table_args__ = (CheckConstraint("state IN ('active', 'disabled')", name="state_known"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str] = mapped_column(String(500))
    credentials: Mapped[str] = mapped_column(String(500))
    webhook_secret: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sync_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class CouponBatch(Base):
    """Coupons a campaign gives out: our own (terms from the campaign's rules) or a
    provider's (terms and stock synced from it; ``provider_state`` its word on the batch).

    ``stock`` is what may still be claimed now: for our own batches the quantity less the
    claims; for a provider's, the provider's stock less our claims it has not issued yet, so
    we never promise more than it has. ``open`` follows the campaign (active or not).
    """

    __tablename__ = "coupon_batches"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_not_negative"),
        CheckConstraint(
            "provider_state IS NULL OR " + _in("provider_state", PROVIDER_STATES),
            name="provider_state_known",
        ),
        CheckConstraint("(face_value_fen IS NULL) <> (rate_bp IS NULL)", name="face_value_or_rate"),
        UniqueConstraint("provider_id", "external_id", name="uq_coupon_batches_provider_batch"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str | None] = mapped_column(
        ForeignKey("campaigns.id"), nullable=True, unique=True
    )
    provider_id: Mapped[str | None] = mapped_column(
        ForeignKey("coupon_providers.id"), nullable=True
    )
    external_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    open: Mapped[bool] = mapped_column(default=False)
    #: our own batch's codes come from imports (``ImportedCode``), not drawn at the claim
    codes_imported: Mapped[bool] = mapped_column(default=False)
    provider_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    claims_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    quantity: Mapped[int] = mapped_column(BigInteger)  # ours: in all; a provider's: its stock
    stock: Mapped[int] = mapped_column(BigInteger)
    claimed: Mapped[int] = mapped_column(BigInteger, default=0)
    per_customer_limit: Mapped[int] = mapped_column(BigInteger, default=1)
    face_value_fen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rate_bp: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_discount_fen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    min_spend_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    valid_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    task: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CouponHolding(Base):
    """How many coupons of a batch a customer has claimed (the per-customer limit)."""

    __tablename__ = "coupon_holdings"

    batch_id: Mapped[str] = mapped_column(ForeignKey("coupon_batches.id"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    claimed: Mapped[int] = mapped_column(BigInteger)


class ImportedCode(Base):
    """A code an operator imported for a batch, given to the claim that takes it."""

    __tablename__ = "coupon_imported_codes"
    __table_args__ = (
        Index(
            "ix_coupon_imported_codes_free",
            "batch_id",
            "code",
            postgresql_where=text("coupon_id IS NULL"),
            sqlite_where=text("coupon_id IS NULL"),
        ),
    )

    code: Mapped[str] = mapped_column(String(CODE_MAX_LENGTH), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("coupon_batches.id"))
    coupon_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Coupon(Base):
    """One coupon in one customer's wallet, with the terms it was claimed under.

    ``code`` is ours, shown at the till (and in its QR code) once the coupon is usable;
    ``provider_code`` the provider's, once it issued the coupon; ``request_no`` the number
    the provider is asked to issue it under, fixed at claim and never regenerated.
    """

    __tablename__ = "coupons"
    __table_args__ = (
        CheckConstraint(_in("state", STATES), name="state_known"),
        Index("ix_coupons_wallet", "customer_id", "claimed_at", "id"),
        Index("ix_coupons_batch_state", "batch_id", "state"),
        Index("ix_coupons_campaign_customer", "campaign_id", "customer_id", "state"),
        Index("ix_coupons_expiry", "state", "valid_until"),
        Index(
            "ix_coupons_task_due",
            "task_due_at",
            postgresql_where=text("state = 'received'"),
            sqlite_where=text("state = 'received'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("coupon_batches.id"))
    campaign_id: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(String(64))
    code: Mapped[str] = mapped_column(String(CODE_MAX_LENGTH), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    task_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime)
    face_value_fen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rate_bp: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_discount_fen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    min_spend_fen: Mapped[int] = mapped_column(BigInteger)
    provider_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    request_no: Mapped[str | None] = mapped_column(String(48), nullable=True, unique=True)
    provider_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    held_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    held_by: Mapped[str | None] = mapped_column(String(32), nullable=True)  # merchant id
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CouponTransition(Base):
    """One state change of a coupon: from, to, who (``actor``: a user id, ``provider:<code>``
    or ``system``), when and why."""

    __tablename__ = "coupon_transitions"
    __table_args__ = (Index("ix_coupon_transitions_coupon", "coupon_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class CouponRedemption(Base):
    """A coupon used at a merchant's till; ``undone_at`` set when the merchant undid it within
    the window. At most one redemption of a coupon stands (a partial unique index)."""

    __tablename__ = "coupon_redemptions"
    __table_args__ = (
        Index("ix_coupon_redemptions_merchant", "merchant_id", "redeemed_at", "id"),
        Index(
            "uq_coupon_redemptions_standing",
            "coupon_id",
            unique=True,
            postgresql_where=text("undone_at IS NULL"),
            sqlite_where=text("undone_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    campaign_id: Mapped[str] = mapped_column(String(32))
    merchant_id: Mapped[str] = mapped_column(String(32))
    staff_id: Mapped[str] = mapped_column(String(32))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    discount_fen: Mapped[int] = mapped_column(BigInteger)
    redeemed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    undone_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: third-party coupons: pending until the provider confirmed, or its refusal
    provider_state: Mapped[str | None] = mapped_column(String(40), nullable=True)


class ProviderCall(Base):
    """A call to a provider waiting to leave, written in the transaction that needs it (so
    nothing is sent for a change that rolled back) and sent by workers after the commit.

    ``request_no`` is derived from what the call is about and never regenerated; once a call
    was attempted (``attempts > 0``), the provider is asked what it did under that number
    before the call is sent again, so a lost answer never issues or redeems twice.
    """

    __tablename__ = "coupon_provider_calls"
    __table_args__ = (
        CheckConstraint(_in("action", CALL_ACTIONS), name="action_known"),
        CheckConstraint(_in("state", CALL_STATES), name="state_known"),
        Index("ix_coupon_provider_calls_due", "state", "due_at"),
        # A coupon's earlier calls still open (calls.take sends a coupon's calls in order).
        Index("ix_coupon_provider_calls_coupon", "coupon_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("coupon_providers.id"))
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    redemption_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    request_no: Mapped[str] = mapped_column(String(48), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
