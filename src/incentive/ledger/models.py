"""Ledger tables: accounts holding integer balances and the double-entry transfers between them.

A balance is only ever changed by ``ledger.service`` together with the ``transfers`` row that
explains it, so ``balance == sum(credits) - sum(debits)`` holds for every account at every
commit. The CHECK constraints are a last line of defence behind the service's own checks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, utcnow

# A balance is a BIGINT on both engines; SQLite would silently turn a sum beyond it into a REAL.
BALANCE_MAX = 2**63 - 1
BALANCE_MIN = -(2**63)


class Account(Base):
    """A balance of one asset (``POINTS``, ``CNY`` in fen...) held by one owner.

    ``allow_negative`` is reserved for funding/issuer accounts (the platform's points issuer,
    a partner's clearing account); every other account can never go below zero.
    """

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("owner_type", "owner_id", "asset", "name", name="uq_accounts_owner"),
        CheckConstraint("allow_negative OR balance >= 0", name="balance_not_negative"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    owner_type: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(64))
    asset: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64), default="main")
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    allow_negative: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Transfer(Base):
    """One movement of ``amount`` from the debit account to the credit account (same asset).

    ``idempotency_key`` is globally unique: the same key can never move value twice.
    """

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        Index("ix_transfers_debit_history", "debit_account_id", "id"),
        Index("ix_transfers_credit_history", "credit_account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    debit_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"))
    credit_account_id: Mapped[int] = mapped_column(BigId, ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(200), default="")
    # ``metadata`` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# The columns a new transfer row is written with (set-based INSERT … SELECT and COPY).
TRANSFER_COLUMNS = (
    "idempotency_key",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "asset",
    "kind",
    "reference",
    "metadata",
    "created_at",
)
