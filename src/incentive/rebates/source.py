"""The ``rebate_outcome`` data source: one record per rebated payment of a campaign — what
each party was paid from the budget, and what refunds took back.

Its key is ``<campaign id>:<activity id>``. Rebates publish no outbox event, and a refund's
reversal writes no time of its own: ``changed_at`` is when the payment was rebated, so a
``since`` sync sees new rebates, and reversals only on a full pass or by key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from incentive.kit.sources import ModuleType, TableSource, register_source
from incentive.rebates.models import RebatePayout

_FEN = (
    "payment_fen",
    "user_fen",
    "merchant_fen",
    "staff_fen",
    "refunded_fen",
    "reversed_user_fen",
    "reversed_merchant_fen",
    "reversed_staff_fen",
    "shortfall_fen",
)


class RebateOutcomeSource(TableSource):
    name = "rebate_outcome"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "campaign_id": "string",
        "activity_id": "integer",
        "payment_id": "string",
        "customer": "string",
        "merchant": "string",
        "staff": "string",
        **{f: "fen" for f in _FEN},
        "reversed": "boolean",
        "paid_at": "datetime",
    }
    key = (RebatePayout.campaign_id, RebatePayout.activity_id)
    campaign = RebatePayout.campaign_id
    changed = RebatePayout.paid_at

    def columns(self) -> Mapping[str, Any]:
        return {f: getattr(RebatePayout, f) for f in self.fields if f != "reversed"}

    def shape(self, values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "reversed": values["refunded_fen"] > 0}


register_source(RebateOutcomeSource())
