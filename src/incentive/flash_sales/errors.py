"""Flash-sale errors. ``except FlashSaleError`` catches every refusal of the flash sales."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, ServiceUnavailable


class FlashSaleError(IncentiveError):
    """Marker base of the flash sales' refusals (combined with an HTTP-shaped base)."""


class AlreadyActivated(FlashSaleError, Conflict):
    slug = "flash-sale-conflict"
    title = "Flash sale conflict"


class NotOnSale(FlashSaleError, Conflict):
    """Not active, not split yet, or outside the sale window."""

    slug = "not-on-sale"
    title = "Not on sale"


class LimitExceeded(FlashSaleError, Conflict):
    """The buyer's per-user limit would be passed."""

    slug = "limit-exceeded"
    title = "Per-user limit exceeded"


class FlowClosed(FlashSaleError, ServiceUnavailable):
    """The sale's flow-control switch is off; retry after ``Retry-After``."""

    slug = "flow-closed"
    title = "Sale paused by flow control"
