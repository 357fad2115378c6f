"""Rebate tables: what each rebated payment paid and has had reversed, and the running totals
the per-customer and per-merchant caps are checked against."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime

PARTS = ("user", "merchant", "staff")


class RebatePayout(Base):
    """One rebated payment of one campaign: the three parts paid from the budget, and how much
    of the payment has been refunded and of each part reversed (``shortfall_fen``: reversal
    owed that the party's balance could not cover, recorded rather than forced)."""

    __tablename__ = "rebate_payouts"
    __table_args__ = (
        Index("ix_rebate_payouts_merchant", "campaign_id", "merchant", "activity_id"),
        Index("ix_rebate_payouts_customer", "customer", "activity_id"),
    )

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activities.id"), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(64))  # the sender's id of the payment
    customer: Mapped[str] = mapped_column(String(64))
    merchant: Mapped[str] = mapped_column(String(64))
    staff: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payment_fen: Mapped[int] = mapped_column(BigInteger)
    user_fen: Mapped[int] = mapped_column(BigInteger)
    merchant_fen: Mapped[int] = mapped_column(BigInteger)
    staff_fen: Mapped[int] = mapped_column(BigInteger)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    reversed_user_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    reversed_merchant_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    reversed_staff_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    shortfall_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RebateTotal(Base):
    """What one customer or merchant has been paid by one campaign, on one day (``day``
    ``YYYY-MM-DD`` in the rules' cap time zone) or in all (``day`` ``*``). Changed only under
    its row lock, so a cap holds under any concurrency."""

    __tablename__ = "rebate_totals"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    party: Mapped[str] = mapped_column(String(16), primary_key=True)  # customer | merchant
    party_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    paid_fen: Mapped[int] = mapped_column(BigInteger)
