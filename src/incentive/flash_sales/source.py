"""The ``flash_sale_purchase`` data source: each acknowledged purchase of a flash sale.

A purchase never changes once written (``changed_at`` is when it was made), and flash sales
publish nothing of their purchases (``flash_sale.activated`` is about the sale's stock). The
buyer's idempotency key and the stock buckets taken stay here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from incentive.flash_sales.models import Purchase
from incentive.kit.sources import ModuleType, TableSource, register_source


class FlashSalePurchaseSource(TableSource):
    name = "flash_sale_purchase"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "id": "string",
        "campaign_id": "string",
        "user_id": "string",
        "quantity": "integer",
        "created_at": "datetime",
    }
    key = (Purchase.id,)
    campaign = Purchase.flash_sale_id
    changed = Purchase.created_at

    def columns(self) -> Mapping[str, Any]:
        return {
            "id": Purchase.id,
            "campaign_id": Purchase.flash_sale_id,
            "user_id": Purchase.user_id,
            "quantity": Purchase.quantity,
            "created_at": Purchase.created_at,
        }


register_source(FlashSalePurchaseSource())
