"""Prometheus metrics of the stock engine, labelled by backend (and pool/bucket for levels)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter

from prometheus_client import Counter, Gauge, Histogram

from incentive.stock.engine import Deduction, Take
from incentive.stock.errors import SoldOut

ATTEMPTS = Counter(
    "incentive_stock_deduction_attempts_total", "Stock deductions requested", ["backend"]
)
SUCCESSES = Counter("incentive_stock_deductions_total", "Stock deductions served", ["backend"])
SOLD_OUT = Counter(
    "incentive_stock_sold_out_total", "Stock deductions refused as sold out", ["backend"]
)
ACROSS = Counter(
    "incentive_stock_cross_bucket_deductions_total",
    "Deductions served across several buckets because no single bucket could",
    ["backend"],
)
LATENCY = Histogram(
    "incentive_stock_deduction_seconds",
    "Stock deduction latency",
    ["backend"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
REMAINING = Gauge(
    "incentive_stock_bucket_remaining",
    "Units left per bucket, as of the last remaining() call",
    ["pool", "bucket"],
)


class DeductionMetrics:
    """Label children bound once per engine: ``labels()`` is too slow for the hot path."""

    __slots__ = ("across", "attempts", "latency", "sold_out", "successes")

    def __init__(self, backend: str) -> None:
        self.attempts = ATTEMPTS.labels(backend)
        self.successes = SUCCESSES.labels(backend)
        self.sold_out = SOLD_OUT.labels(backend)
        self.across = ACROSS.labels(backend)
        self.latency = LATENCY.labels(backend)

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Count and time one deduction attempt; a SoldOut is counted as such."""
        self.attempts.inc()
        started = perf_counter()
        try:
            yield
        except SoldOut:
            self.sold_out.inc()
            raise
        finally:
            self.latency.observe(perf_counter() - started)

    def served(self, pool: str, quantity: int, takes: tuple[Take, ...]) -> Deduction:
        self.successes.inc()
        if len(takes) > 1:
            self.across.inc()
        return Deduction(pool, quantity, takes)


# How many bucket series each pool has in REMAINING, so stale ones can be removed.
_series: dict[str, int] = {}


def record_levels(pool: str, levels: Sequence[int]) -> None:
    for bucket, level in enumerate(levels):
        REMAINING.labels(pool, str(bucket)).set(level)
    _remove_series(pool, len(levels))
    _series[pool] = len(levels)


def forget_levels(pool: str) -> None:
    _remove_series(pool, 0)
    _series.pop(pool, None)


def _remove_series(pool: str, keep: int) -> None:
    for bucket in range(keep, _series.get(pool, 0)):
        try:
            REMAINING.remove(pool, str(bucket))
        except KeyError:
            continue
