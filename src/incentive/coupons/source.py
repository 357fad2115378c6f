"""The ``coupon`` data source: every coupon in a customer's wallet, with its terms, state and
standing redemption.

Never the code itself, ours or the provider's: whoever holds it can redeem the coupon.
``coupon.failed`` names a coupon the provider refused to issue; the other state changes
(claims, redemptions, expiry) publish nothing and move ``updated_at``, which ``since`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import Select, and_

from incentive.coupons.models import Coupon, CouponRedemption
from incentive.coupons.service import FAILED_TOPIC
from incentive.kit.sources import ModuleType, TableSource, register_source

_STANDING = and_(CouponRedemption.coupon_id == Coupon.id, CouponRedemption.undone_at.is_(None))


class CouponSource(TableSource):
    name = "coupon"
    fields: ClassVar[Mapping[str, ModuleType]] = {
        "id": "string",
        "batch_id": "string",
        "campaign_id": "string",
        "customer_id": "string",
        "state": "string",
        "face_value_fen": "fen",
        "rate_bp": "integer",
        "max_discount_fen": "fen",
        "min_spend_fen": "fen",
        "valid_from": "datetime",
        "valid_until": "datetime",
        "claimed_at": "datetime",
        "provider_id": "string",
        "reason": "string",
        "updated_at": "datetime",
        "redeemed_at": "datetime",
        "redeemed_merchant_id": "string",
        "redeemed_amount_fen": "fen",
        "redeemed_discount_fen": "fen",
    }
    topic_keys: ClassVar[Mapping[str, str]] = {FAILED_TOPIC: "coupon_id"}
    key = (Coupon.id,)
    campaign = Coupon.campaign_id
    changed = Coupon.updated_at

    def columns(self) -> Mapping[str, Any]:
        redeemed = {
            "redeemed_at": CouponRedemption.redeemed_at,
            "redeemed_merchant_id": CouponRedemption.merchant_id,
            "redeemed_amount_fen": CouponRedemption.amount_fen,
            "redeemed_discount_fen": CouponRedemption.discount_fen,
        }
        return {f: redeemed[f] if f in redeemed else getattr(Coupon, f) for f in self.fields}

    def joined(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.select_from(Coupon).outerjoin(CouponRedemption, _STANDING)


register_source(CouponSource())
