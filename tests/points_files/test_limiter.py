"""The adaptive limiter with an injected clock: deterministic, no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incentive.points_files.limiter import (
    BATCH_SIZE_BOUNDS,
    CONCURRENCY_BOUNDS,
    AdaptiveLimiter,
    LimitChange,
    LimiterSettings,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**overrides: float) -> tuple[AdaptiveLimiter, Clock]:
    clock = Clock()
    base: dict[str, float] = {
        "initial_batch_size": 2_500,
        "max_batch_size": 5_000,
        "initial_concurrency": 8,
        "max_concurrency": 16,
        "target_latency_s": 1.0,
        "cooldown_s": 5.0,
    }
    base.update(overrides)
    return AdaptiveLimiter(LimiterSettings(**base), clock), clock  # type: ignore[arg-type]


def test_starts_at_initial_values() -> None:
    limiter, _ = make()
    snap = limiter.snapshot()
    assert (snap.batch_size, snap.concurrency) == (2_500, 8)
    assert snap.last_change is LimitChange.NONE
    assert snap.latency_ewma_s is None


def test_slow_calls_decrease_both() -> None:
    limiter, _ = make()
    assert limiter.record_success(3.0) is LimitChange.DECREASED_SLOW
    assert (limiter.batch_size, limiter.concurrency) == (1_250, 4)


def test_errors_decrease_both() -> None:
    limiter, _ = make()
    assert limiter.record_error() is LimitChange.DECREASED_ERROR
    assert (limiter.batch_size, limiter.concurrency) == (1_250, 4)
    assert limiter.snapshot().errors == 1


def test_a_wave_of_failures_counts_once_per_cooldown() -> None:
    limiter, clock = make()
    for _ in range(20):
        limiter.record_error()
    assert (limiter.batch_size, limiter.concurrency) == (1_250, 4)
    clock.advance(5.0)
    limiter.record_error()
    assert (limiter.batch_size, limiter.concurrency) == (625, 2)


def test_never_below_minimum() -> None:
    limiter, clock = make(min_batch_size=200, min_concurrency=2)
    for _ in range(50):
        limiter.record_error()
        clock.advance(10)
    assert (limiter.batch_size, limiter.concurrency) == (200, 2)
    assert limiter.record_error() is LimitChange.NONE


def test_healthy_calls_increase_additively_after_cooldown() -> None:
    limiter, clock = make()
    assert limiter.record_success(0.1) is LimitChange.INCREASED
    assert (limiter.batch_size, limiter.concurrency) == (2_750, 9)
    # within the cool-down nothing moves, however many fast calls come back
    for _ in range(100):
        assert limiter.record_success(0.1) is LimitChange.NONE
    clock.advance(5.0)
    assert limiter.record_success(0.1) is LimitChange.INCREASED
    assert (limiter.batch_size, limiter.concurrency) == (3_000, 10)


def test_hysteresis_band_holds() -> None:
    limiter, clock = make(healthy_ratio=0.8)
    clock.advance(100)
    assert limiter.record_success(0.9) is LimitChange.NONE  # between 0.8 and 1.0 s
    assert (limiter.batch_size, limiter.concurrency) == (2_500, 8)


def test_ewma_smooths_a_single_spike() -> None:
    limiter, clock = make(ewma_alpha=0.2)
    for _ in range(10):
        limiter.record_success(0.5)
        clock.advance(1)
    before = (limiter.batch_size, limiter.concurrency)
    clock.advance(1)
    # one 2 s call in a run of 0.5 s calls: EWMA 0.8 s, below the 1 s target -> no decrease
    assert limiter.record_success(2.0) is not LimitChange.DECREASED_SLOW
    assert limiter.batch_size >= before[0]


def test_growth_waits_for_a_calm_period_after_trouble() -> None:
    limiter, clock = make()
    limiter.record_error()
    clock.advance(4.9)
    assert limiter.record_success(0.1) is LimitChange.NONE
    clock.advance(0.1)
    assert limiter.record_success(0.1) is LimitChange.INCREASED


def test_recovery_reaches_the_ceiling_and_stays() -> None:
    limiter, clock = make(
        initial_batch_size=2_500, max_batch_size=5_000, initial_concurrency=8, max_concurrency=16
    )
    for _ in range(3):
        limiter.record_error()
        clock.advance(5)
    assert (limiter.batch_size, limiter.concurrency) == (312, 1)
    for _ in range(200):
        limiter.record_success(0.2)
        clock.advance(5)
    assert (limiter.batch_size, limiter.concurrency) == (5_000, 16)
    assert limiter.record_success(0.2) is LimitChange.NONE
    assert limiter.snapshot().last_change is LimitChange.INCREASED


def test_slow_target_converges_below_target() -> None:
    """A target whose latency grows with load: limits settle where calls fit the target."""
    limiter, clock = make(
        target_latency_s=1.0,
        initial_batch_size=20_000,
        max_batch_size=50_000,
        initial_concurrency=8,
        max_concurrency=64,
    )
    for _ in range(2_000):
        load = limiter.batch_size * limiter.concurrency
        latency = 0.05 + load / 40_000  # 1 s at 38,000 records in flight
        limiter.record_success(latency)
        clock.advance(1)
    final_load = limiter.batch_size * limiter.concurrency
    assert final_load <= 38_000
    assert final_load >= 38_000 / 8  # it did not collapse to the floor
    assert limiter.snapshot().decreases > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_batch_size": 99},
        {"max_batch_size": 50_001},
        {"initial_batch_size": 6_000},
        {"min_concurrency": 0},
        {"max_concurrency": 65},
        {"initial_concurrency": 20},
        {"decrease_factor": 1.0},
        {"decrease_factor": 0.0},
        {"target_latency_s": 0.0},
        {"ewma_alpha": 0.0},
        {"healthy_ratio": 1.5},
        {"batch_size_step": 0},
        {"cooldown_s": -1.0},
    ],
)
def test_settings_are_validated(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        make(**overrides)


def test_bad_latency_is_refused() -> None:
    limiter, _ = make()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="latency"):
            limiter.record_success(bad)


events = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(min_value=0, max_value=30, allow_nan=False)),
        st.floats(min_value=0, max_value=20, allow_nan=False),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(
    events=events,
    initial_batch=st.integers(*BATCH_SIZE_BOUNDS),
    initial_conc=st.integers(*CONCURRENCY_BOUNDS),
)
def test_never_outside_bounds(
    events: list[tuple[float | None, float]], initial_batch: int, initial_conc: int
) -> None:
    cfg = LimiterSettings(
        initial_batch_size=initial_batch,
        min_batch_size=100,
        max_batch_size=max(initial_batch, 10_000),
        initial_concurrency=initial_conc,
        min_concurrency=1,
        max_concurrency=max(initial_conc, 32),
        target_latency_s=1.0,
        cooldown_s=2.0,
    )
    clock = Clock()
    limiter = AdaptiveLimiter(cfg, clock)
    previous = (limiter.batch_size, limiter.concurrency)
    for latency, wait in events:
        clock.advance(wait)
        change = limiter.record_error() if latency is None else limiter.record_success(latency)
        current = (limiter.batch_size, limiter.concurrency)
        assert cfg.min_batch_size <= current[0] <= cfg.max_batch_size
        assert cfg.min_concurrency <= current[1] <= cfg.max_concurrency
        if change is LimitChange.NONE:
            assert current == previous
        elif change is LimitChange.INCREASED:
            assert current[0] >= previous[0]
            assert current[1] >= previous[1]
            assert latency is not None
        else:
            assert current[0] <= previous[0]
            assert current[1] <= previous[1]
        previous = current


def test_same_inputs_same_outputs() -> None:
    def run() -> list[tuple[int, int]]:
        limiter, clock = make()
        out = []
        for i in range(200):
            if i % 17 == 0:
                limiter.record_error()
            else:
                limiter.record_success((i % 7) * 0.3)
            clock.advance(1.5)
            out.append((limiter.batch_size, limiter.concurrency))
        return out

    assert run() == run()
