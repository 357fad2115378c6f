"""Prometheus metrics of rewards: grants, fallbacks, stock levels and alerts."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

GRANTS = Counter(
    "incentive_reward_grants_total",
    "Reward triggers by result (the reward's type, or the refusal)",
    ["result"],
)
SKIPS = Counter(
    "incentive_reward_fallbacks_total",
    "Rewards skipped while walking a chain, by reason",
    ["reason"],
)
STOCK = Gauge(
    "incentive_reward_stock",
    "Units left of each live reward (read by the stock watch and on every stock read)",
    ["campaign_id", "reward"],
)
LOW_STOCK = Counter(
    "incentive_reward_low_stock_alerts_total",
    "Low-stock alerts fired (a reward fell below its threshold)",
    ["campaign_id", "reward"],
)
LATE_REVOKED = Counter(
    "incentive_reward_late_coupons_revoked_total",
    "Third-party coupons issued after their grant fell back, revoked (the fallback stands)",
)
