"""Referral tables: invites (a referrer's token for one campaign), referrals (one referee's
acceptance of an invite, accepted or rejected with its reason), the counters that hold the
caps under concurrency, and the identity signals (peppered hashes of device ids, phone numbers
and payment instruments) the self-referral check compares.

A referral's life: ``accepted`` (or ``rejected`` with its reason) → the referee does the
business → ``completed`` (the conditional claim), then at once ``rewarded`` (paid), or
``pending`` (held until ``release_at``) → ``rewarded``, or ``voided`` by a refund first;
``completed`` stays when nothing could be paid (``reason``: ``budget-exhausted``). An
accepted referral whose business window passed becomes ``expired``. Each payee of a
completed referral has one ``referral_rewards`` row, keyed by (referral, side, level);
``parent_id`` fixes the multi-level chain at acceptance.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow

STATES = ("accepted", "rejected", "completed", "pending", "rewarded", "voided", "expired")
REWARD_STATES = ("pending", "paid", "voided", "unpaid")
SIDES = ("referrer", "referee")
#: how a referee accepted: signing up with the token, explicitly, or a partner's activity
VIAS = ("signup", "acceptance", "activity")
SIGNALS = ("device", "phone", "instrument")
WINNING = "state <> 'rejected'"


class ReferralInvite(Base):
    """One invite of a referrer for one campaign; ``token`` is its public name, accepted
    until ``expires_at`` (the rules' attribution window after it was made)."""

    __tablename__ = "referral_invites"
    __table_args__ = (
        Index("ix_referral_invites_referrer_created", "referrer_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    referrer_id: Mapped[str] = mapped_column(String(32))
    referrer_role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Referral(Base):
    """A referee's acceptance of an invite. At most one not ``rejected`` per (campaign,
    referee) — the first valid invite wins (partial unique index) — and one row per (invite,
    referee), so accepting again answers the first row. A rejected one keeps its ``reason``
    (``self-referral``, ``existing-account``, ``ring``, ``referrer-cap``, ``address-burst``,
    ``already-referred``) and is shown to the referrer."""

    __tablename__ = "referrals"
    __table_args__ = (
        Index("uq_referrals_invite_referee", "invite_id", "referee_id", unique=True),
        Index(
            "uq_referrals_campaign_referee",
            "campaign_id",
            "referee_id",
            unique=True,
            sqlite_where=text(WINNING),
            postgresql_where=text(WINNING),
        ),
        Index("ix_referrals_referrer_created", "referrer_id", "created_at", "id"),
        Index("ix_referrals_state_release", "state", "release_at"),
        Index("ix_referrals_campaign_created", "campaign_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    invite_id: Mapped[str] = mapped_column(ForeignKey("referral_invites.id"))
    referrer_id: Mapped[str] = mapped_column(String(32))
    referee_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    via: Mapped[str] = mapped_column(String(16))
    #: the referrer's own winning referral in this campaign when this one was accepted (the
    #: multi-level chain, fixed at acceptance)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    address_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: the business must be done by then (accepted + ``business.within_days``)
    business_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: when and by which activity (our id) the business was done, and its amount
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    business_amount_fen: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: what refunds of that activity took back so far
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: a held (``pending``) referral's rewards are paid then
    release_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReferralReward(Base):
    """What one payee gets for a completed referral: the referrer (``side`` referrer, level
    1), the referrer's referrers (levels 2 and 3, multi-level) or the referee (``side``
    referee, level 0). ``state``: ``pending`` (held: points and cash wait in the campaign's
    escrow account), ``paid``, ``voided`` (a refund in the hold: the escrow went back to the
    budget) or ``unpaid`` with its ``reason`` (``budget-exhausted``, ``out-of-stock``, …)."""

    __tablename__ = "referral_rewards"
    __table_args__ = (
        Index("uq_referral_rewards_payee", "referral_id", "side", "level", unique=True),
        Index("ix_referral_rewards_beneficiary", "beneficiary_id", "created_at", "id"),
        Index("ix_referral_rewards_campaign", "campaign_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"))
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    beneficiary_id: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(16))
    level: Mapped[int] = mapped_column(SmallInteger)
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    coupon_batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: the coupon given (ledger rewards move under ``referral:<id>:hold|pay|release|void``)
    coupon_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReferralCount(Base):
    """A counter of accepted referrals: per referrer and campaign (``period`` ``all``) or UTC
    day, and per client address hash and campaign per UTC hour. Each grows with one
    ``INSERT … ON CONFLICT DO UPDATE … WHERE n < :cap RETURNING``."""

    __tablename__ = "referral_counts"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(String(80), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class ReferralSignal(Base):
    """A peppered hash of something identifying a person's device, phone or payment
    instrument that a user presented (at sign-up, an invite or an acceptance)."""

    __tablename__ = "referral_signals"
    __table_args__ = (Index("ix_referral_signals_hash", "kind", "hash"),)

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
