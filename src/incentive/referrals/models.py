"""Referral tables: invites (a referrer's token for one campaign), referrals (one referee's
acceptance of an invite, accepted or rejected with its reason), the counters that hold the
caps under concurrency, and the identity signals (peppered hashes of device ids, phone numbers
and payment instruments) the self-referral check compares.

Part 2 (completion and rewards) extends ``referrals`` through its nullable completion columns
and adds its reward rows keyed by (referral, beneficiary level); ``parent_id`` already fixes
the multi-level chain at acceptance.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow

STATES = ("accepted", "rejected")
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
    #: part 2: when and by which activity the business was done
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
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
