"""Live configuration tables: current overrides, their audit trail, and the change counter.

A key without a ``config_entries`` row has its registered default. ``config_revision`` holds a
single row whose counter goes up by one in the same transaction as every change; processes
poll that one integer to know cheaply whether to reload, and because the increment locks the
row until commit, revisions become visible in increasing order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, utcnow

REVISION_ROW_ID = 1


class ConfigEntry(Base):
    """The operator-set value of one key; ``version`` counts its changes (1 = first set)."""

    __tablename__ = "config_entries"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(100))


class ConfigAudit(Base):
    """Every change: ``set`` or ``reset`` (back to the default), the effective value before and
    after, who, when, and from which request."""

    __tablename__ = "config_audit"
    __table_args__ = (Index("ix_config_audit_key_id", "key", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    old_value: Mapped[Any] = mapped_column(JSON)
    new_value: Mapped[Any] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ConfigRevision(Base):
    __tablename__ = "config_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
