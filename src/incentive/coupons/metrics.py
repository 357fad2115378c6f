"""Prometheus counters of coupons: claims, unlocks, redemptions and provider calls."""

from __future__ import annotations

from prometheus_client import Counter

CLAIMS = Counter("incentive_coupon_claims_total", "Coupon claims by result", ["result"])
REDEMPTIONS = Counter(
    "incentive_coupon_redemptions_total", "Coupon redemptions at tills by result", ["result"]
)
EXPIRED = Counter("incentive_coupons_expired_total", "Coupons expired by the expiry job")
PROVIDER_CALLS = Counter(
    "incentive_coupon_provider_calls_total",
    "Calls to coupon providers by action and answer (done, refused, unclear)",
    ["action", "answer"],
)
WEBHOOKS = Counter(
    "incentive_coupon_provider_webhooks_total",
    "Provider webhooks received by result",
    ["provider", "result"],
)
