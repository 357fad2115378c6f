"""Ledger errors. ``except LedgerError`` catches every refusal of the ledger."""

from __future__ import annotations

from incentive.errors import Conflict, IdempotencyConflict, IncentiveError, NotFound


class LedgerError(IncentiveError):
    """Marker base of the ledger's refusals (combined with the HTTP-shaped base below)."""


class AccountNotFound(LedgerError, NotFound):
    slug = "account-not-found"
    title = "Account not found"


class InsufficientFunds(LedgerError, Conflict):
    """The debit would take a non-negative account below zero; nothing was written."""

    slug = "insufficient-funds"
    title = "Insufficient funds"


class BalanceLimit(LedgerError, Conflict):
    """The transfer would take a balance outside BIGINT (above 2^63-1 or below -2^63);
    nothing was written."""

    slug = "balance-limit"
    title = "Balance limit reached"


class AssetMismatch(LedgerError, Conflict):
    """Debit and credit accounts hold different assets (points cannot become fen)."""

    slug = "asset-mismatch"
    title = "Accounts hold different assets"


class TransferKeyReused(LedgerError, IdempotencyConflict):
    """A transfer idempotency key was already used for a transfer with different content."""
