"""Adaptive batch size and concurrency for crediting, in the style of Netflix concurrency-limits.

AIMD on two knobs at once: the number of records per crediting call (batch size) and the number
of calls in flight (concurrency). Every finished call reports its latency or its failure:

- latency is smoothed with an EWMA; above ``target_latency_s`` the target is slowing down,
  at or below ``target_latency_s * healthy_ratio`` it is healthy (between the two: hold, a
  hysteresis band so the limits do not flap at the threshold);
- slow or failed → both knobs are multiplied by ``decrease_factor`` (never below their
  minimum), at most once per ``cooldown_s``: a wave of calls that were already in flight when
  trouble started counts once, not once per call;
- healthy → both knobs grow by a fixed step (never above their maximum), only once
  ``cooldown_s`` has passed since the last change and since the last slow or failed call, so
  each step is measured before the next and growth waits for a calm period;
- after a decrease the EWMA restarts, so the next decisions describe the new limits.

Latency is per call, and a bigger batch takes longer: so ``target_latency_s`` is "how long one
crediting call may take", and the batch size settles where calls fit in it.

The limiter is pure: it reads time only through the injected ``clock`` and holds no locks (use
it from one event loop). Batch size is bounded 100..50,000 and concurrency 1..64 whatever the
settings say; defaults start at 2,500 records x 4 calls with a 5,000-record ceiling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

BATCH_SIZE_BOUNDS = (100, 50_000)
CONCURRENCY_BOUNDS = (1, 64)


class LimitChange(StrEnum):
    NONE = "none"
    DECREASED_SLOW = "decreased_slow"
    DECREASED_ERROR = "decreased_error"
    INCREASED = "increased"


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    initial_batch_size: int = 2_500
    min_batch_size: int = 100
    max_batch_size: int = 5_000
    initial_concurrency: int = 4
    min_concurrency: int = 1
    max_concurrency: int = 16
    target_latency_s: float = 2.0
    healthy_ratio: float = 0.8
    ewma_alpha: float = 0.3
    decrease_factor: float = 0.5
    batch_size_step: int = 250
    concurrency_step: int = 1
    cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        lo, hi = BATCH_SIZE_BOUNDS
        if not lo <= self.min_batch_size <= self.initial_batch_size <= self.max_batch_size <= hi:
            raise ValueError(
                f"need {lo} <= min_batch_size <= initial_batch_size <= max_batch_size <= {hi}"
            )
        lo, hi = CONCURRENCY_BOUNDS
        if not (
            lo <= self.min_concurrency <= self.initial_concurrency <= self.max_concurrency <= hi
        ):
            raise ValueError(
                f"need {lo} <= min_concurrency <= initial_concurrency <= max_concurrency <= {hi}"
            )
        if not (math.isfinite(self.target_latency_s) and self.target_latency_s > 0):
            raise ValueError("target_latency_s must be positive")
        if not 0 < self.healthy_ratio <= 1:
            raise ValueError("healthy_ratio must be in (0, 1]")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if not 0 < self.decrease_factor < 1:
            raise ValueError("decrease_factor must be in (0, 1)")
        if self.batch_size_step < 1 or self.concurrency_step < 1:
            raise ValueError("increase steps must be at least 1")
        if not (math.isfinite(self.cooldown_s) and self.cooldown_s >= 0):
            raise ValueError("cooldown_s must be >= 0")


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """Current limits and what led to them (for the progress API and metrics)."""

    batch_size: int
    concurrency: int
    latency_ewma_s: float | None
    last_change: LimitChange
    decreases: int
    increases: int
    successes: int
    errors: int


class AdaptiveLimiter:
    def __init__(
        self,
        settings: LimiterSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or LimiterSettings()
        self._clock = clock
        self._batch_size = self.settings.initial_batch_size
        self._concurrency = self.settings.initial_concurrency
        self._ewma: float | None = None
        self._last_decrease_at = -math.inf
        self._last_change_at = -math.inf
        self._last_trouble_at = -math.inf
        self._last_change = LimitChange.NONE
        self._decreases = self._increases = self._successes = self._errors = 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def snapshot(self) -> LimiterSnapshot:
        return LimiterSnapshot(
            self._batch_size,
            self._concurrency,
            self._ewma,
            self._last_change,
            self._decreases,
            self._increases,
            self._successes,
            self._errors,
        )

    def record_success(self, latency_s: float) -> LimitChange:
        """A crediting call finished in ``latency_s``; returns the change it caused, if any."""
        if not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError("latency must be a finite, non-negative number of seconds")
        self._successes += 1
        alpha = self.settings.ewma_alpha
        self._ewma = (
            latency_s if self._ewma is None else alpha * latency_s + (1 - alpha) * self._ewma
        )
        target = self.settings.target_latency_s
        if self._ewma > target:
            return self._decrease(LimitChange.DECREASED_SLOW)
        if self._ewma <= target * self.settings.healthy_ratio:
            return self._increase()
        return LimitChange.NONE

    def record_error(self) -> LimitChange:
        """A crediting call failed for a reason of the target (timeout, 5xx, throttled)."""
        self._errors += 1
        return self._decrease(LimitChange.DECREASED_ERROR)

    def _decrease(self, why: LimitChange) -> LimitChange:
        now = self._clock()
        self._last_trouble_at = now
        if now - self._last_decrease_at < self.settings.cooldown_s:
            return LimitChange.NONE
        s = self.settings
        batch = max(s.min_batch_size, int(self._batch_size * s.decrease_factor))
        concurrency = max(s.min_concurrency, int(self._concurrency * s.decrease_factor))
        self._last_decrease_at = now
        self._ewma = None
        if (batch, concurrency) == (self._batch_size, self._concurrency):
            return LimitChange.NONE  # already at the floor
        self._batch_size, self._concurrency = batch, concurrency
        self._last_change_at = now
        self._last_change = why
        self._decreases += 1
        return why

    def _increase(self) -> LimitChange:
        now = self._clock()
        if now - max(self._last_change_at, self._last_trouble_at) < self.settings.cooldown_s:
            return LimitChange.NONE
        s = self.settings
        batch = min(s.max_batch_size, self._batch_size + s.batch_size_step)
        concurrency = min(s.max_concurrency, self._concurrency + s.concurrency_step)
        if (batch, concurrency) == (self._batch_size, self._concurrency):
            return LimitChange.NONE  # already at the ceiling
        self._batch_size, self._concurrency = batch, concurrency
        self._last_change_at = now
        self._last_change = LimitChange.INCREASED
        self._increases += 1
        return LimitChange.INCREASED
