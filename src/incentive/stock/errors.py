"""Stock errors. ``except StockError`` catches every refusal of the stock engine."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError


class StockError(IncentiveError):
    """Marker base of the stock engine's refusals (combined with an HTTP-shaped base)."""


class SoldOut(StockError, Conflict):
    """The whole pool (every bucket together) cannot serve the quantity; nothing was taken."""

    slug = "sold-out"
    title = "Sold out"


class StockPoolMissing(StockError, Conflict):
    """The pool was never split, was dropped, or was lost with the stock store (rebuild it)."""

    slug = "stock-pool-missing"
    title = "Stock pool does not exist"
