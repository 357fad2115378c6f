from __future__ import annotations

from incentive.errors import Conflict, ServiceUnavailable


class FlashSaleError(Conflict):
    slug = "flash-sale-conflict"
    title = "Flash sale conflict"


class NotOnSale(FlashSaleError):
    slug = "not-on-sale"
    title = "Not on sale"


class LimitExceeded(FlashSaleError):
    slug = "limit-exceeded"
    title = "Per-user limit exceeded"


class FlowClosed(ServiceUnavailable):
    slug = "flow-closed"
    title = "Sale paused by flow control"
