"""Flash-sale counters; deduction latency and per-bucket levels come from the stock engine."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter("incentive_flash_sale_attempts_total", "Purchase attempts")
SUCCESSES = Counter("incentive_flash_sale_purchases_total", "Purchases acknowledged")
SOLD_OUT = Counter("incentive_flash_sale_sold_out_total", "Purchases refused: sold out")
LIMIT_HITS = Counter("incentive_flash_sale_limit_hits_total", "Purchases refused: per-user limit")
SWITCH_REJECTIONS = Counter(
    "incentive_flash_sale_switch_rejections_total", "Purchases refused: flow control off"
)
COMPENSATIONS = Counter(
    "incentive_flash_sale_compensations_total",
    "Deductions given back because their purchase was not recorded",
)
BATCH_SIZE = Histogram(
    "incentive_flash_sale_commit_batch_size",
    "Purchases per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
