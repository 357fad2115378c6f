from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow


class FlashSale(Base):
    """The stock side of a ``flash_sale`` campaign (the campaign row holds its lifecycle).

    ``split_at`` is set once, in the same transaction that records the activation event as
    handled, so the stock is split into buckets exactly once.
    """

    __tablename__ = "flash_sales"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    item_name: Mapped[str] = mapped_column(String(200))
    price_fen: Mapped[int] = mapped_column(Integer)
    total_stock: Mapped[int] = mapped_column(Integer)
    per_user_limit: Mapped[int] = mapped_column(Integer)
    buckets: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
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
    quantity: Mapped[int] = mapped_column(Integer)
    takes: Mapped[list[Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
