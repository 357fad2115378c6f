from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow


class FlashSale(Base):
    """The stock side of a ``flash_sale`` campaign. The campaign row holds its lifecycle,
    window and rules (what was approved); this row only what activation decided: ``buckets``,
    fixed at the first activation, and ``split_at``, set once in the same transaction that
    records the activation event as handled, so the stock is split into buckets exactly once.
    """

    __tablename__ = "flash_sales"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    buckets: Mapped[int | None] = mapped_column(Integer, nullable=True)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    split_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Purchase(Base):
    """One acknowledged purchase. The row is the source of truth for what was sold.

    ``idempotency_key`` is the buyer's ``Idempotency-Key``: unique per sale and buyer, so a
    retried or concurrent duplicate request can never record a second purchase.
    """

    __tablename__ = "flash_sale_purchases"
    # The unique key also serves lookups by sale and by (sale, buyer).
    __table_args__ = (UniqueConstraint("flash_sale_id", "user_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    flash_sale_id: Mapped[str] = mapped_column(ForeignKey("flash_sales.campaign_id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    quantity: Mapped[int] = mapped_column(BigInteger)
    takes: Mapped[list[Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
