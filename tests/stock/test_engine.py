"""The stock engine's promises, on every backend: never oversell, never undersell, split
once, quotas exact, cross-bucket takes, and the negative cases change nothing."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from prometheus_client import REGISTRY

from incentive.errors import InvalidField
from incentive.stock.engine import Deduction, StockEngine, even_split, give_back
from incentive.stock.errors import SoldOut, StockPoolMissing


async def _attempt(engine: StockEngine, pool: str, quantity: int) -> Deduction | None:
    try:
        return await engine.deduct(pool, quantity)
    except SoldOut:
        return None


def _check_takes(deduction: Deduction, buckets: int) -> None:
    assert sum(t.quantity for t in deduction.takes) == deduction.quantity
    assert all(t.quantity > 0 and 0 <= t.bucket < buckets for t in deduction.takes)
    assert len({t.bucket for t in deduction.takes}) == len(deduction.takes)


def test_even_split_spreads_the_remainder_over_the_first_buckets() -> None:
    assert even_split(10, 3) == [4, 3, 3]
    assert even_split(2, 4) == [1, 1, 0, 0]
    assert even_split(0, 2) == [0, 0]


async def test_split_once_with_remainder(engine: StockEngine, pool: str) -> None:
    assert not await engine.exists(pool)
    assert await engine.split(pool, 1003, 4) is True
    assert await engine.exists(pool)
    assert await engine.remaining(pool) == [251, 251, 251, 250]
    assert await engine.split(pool, 50, 2) is False
    assert await engine.remaining(pool) == [251, 251, 251, 250]


async def test_split_exactly_once_under_concurrent_duplicates(
    engine: StockEngine, pool: str
) -> None:
    totals = [100 + i for i in range(50)]
    results = await asyncio.gather(*(engine.split(pool, t, 5) for t in totals))
    assert results.count(True) == 1
    winner = totals[results.index(True)]
    assert await engine.remaining(pool) == even_split(winner, 5)


async def test_5000_concurrent_unit_deductions_against_1000(engine: StockEngine, pool: str) -> None:
    await engine.split(pool, 1000, 8)
    results = await asyncio.gather(*(_attempt(engine, pool, 1) for _ in range(5000)))
    served = [r for r in results if r is not None]
    assert len(served) == 1000
    for deduction in served:
        _check_takes(deduction, 8)
    assert sum(t.quantity for d in served for t in d.takes) == 1000
    assert await engine.remaining(pool) == [0] * 8
    # Every bucket gave exactly its share: nothing taken twice, nothing left behind.
    per_bucket: Counter[int] = Counter()
    for deduction in served:
        for take in deduction.takes:
            per_bucket[take.bucket] += take.quantity
    assert [per_bucket[b] for b in range(8)] == even_split(1000, 8)


async def test_mixed_quantities_never_oversell_nor_undersell(
    engine: StockEngine, pool: str
) -> None:
    stock = 1000
    await engine.split(pool, stock, 6)
    rng = random.Random(7)
    wanted = [rng.randint(1, 5) for _ in range(700)]  # ~2,100 units asked of 1,000
    results = await asyncio.gather(*(_attempt(engine, pool, q) for q in wanted))
    levels = await engine.remaining(pool)
    assert min(levels) >= 0
    taken = sum(d.quantity for d in results if d is not None)
    for deduction in results:
        if deduction is not None:
            _check_takes(deduction, 6)
    assert taken + sum(levels) == stock
    # A refusal for q means the pool held less than q then; stock only fell afterwards.
    refused = [q for q, d in zip(wanted, results, strict=True) if d is None]
    assert refused
    assert sum(levels) < min(refused)
    # Whatever is left is still sellable, one by one, to the last unit.
    sweep = await asyncio.gather(*(_attempt(engine, pool, 1) for _ in range(10)))
    assert taken + sum(1 for d in sweep if d is not None) == stock
    assert await engine.remaining(pool) == [0] * 6


async def test_takes_across_buckets_and_sold_out_only_when_the_total_cannot(
    engine: StockEngine, pool: str
) -> None:
    await engine.split(pool, 10, 5)  # [2, 2, 2, 2, 2]
    deduction = await engine.deduct(pool, 7)
    _check_takes(deduction, 5)
    assert len(deduction.takes) >= 4
    assert sum(await engine.remaining(pool)) == 3
    before = await engine.remaining(pool)
    with pytest.raises(SoldOut) as refused:
        await engine.deduct(pool, 4)
    assert refused.value.slug == "sold-out"
    assert refused.value.status == 409
    assert await engine.remaining(pool) == before  # the refusal took nothing
    last = await engine.deduct(pool, 3)
    _check_takes(last, 5)
    assert await engine.remaining(pool) == [0] * 5
    with pytest.raises(SoldOut):
        await engine.deduct(pool, 1)


async def test_a_bucket_too_low_is_skipped(engine: StockEngine, pool: str) -> None:
    await engine.rebuild(pool, [1, 0, 5, 2])
    for _ in range(2):
        deduction = await engine.deduct(pool, 3)
        assert deduction.takes == ((2, 3),)
        await give_back(engine, deduction)
    assert await engine.remaining(pool) == [1, 0, 5, 2]


async def test_buckets_are_chosen_at_random(engine: StockEngine, pool: str) -> None:
    await engine.split(pool, 1000, 10)
    used: Counter[int] = Counter()
    for _ in range(200):
        deduction = await engine.deduct(pool, 1)
        used[deduction.takes[0].bucket] += 1
    assert len(used) >= 8
    assert max(used.values()) < 60


async def test_concurrent_cross_bucket_takes_keep_the_sum(engine: StockEngine, pool: str) -> None:
    # 40 buckets of 3: every request for 4..7 must cross buckets.
    await engine.split(pool, 120, 40)
    rng = random.Random(11)
    wanted = [rng.randint(4, 7) for _ in range(60)]
    results = await asyncio.gather(*(_attempt(engine, pool, q) for q in wanted))
    levels = await engine.remaining(pool)
    assert min(levels) >= 0
    taken = sum(d.quantity for d in results if d is not None)
    assert taken + sum(levels) == 120
    refused = [q for q, d in zip(wanted, results, strict=True) if d is None]
    assert not refused or sum(levels) < min(refused)


async def test_restore_and_give_back(engine: StockEngine, pool: str) -> None:
    await engine.split(pool, 4, 2)
    deduction = await engine.deduct(pool, 3)
    await give_back(engine, deduction)
    assert await engine.remaining(pool) == [2, 2]
    assert await engine.restore(pool, 1, 5) == 7
    assert await engine.remaining(pool) == [2, 7]


async def test_rebuild_overwrites_and_drop_forgets(engine: StockEngine, pool: str) -> None:
    await engine.split(pool, 100, 4)
    await engine.rebuild(pool, [3, 0])
    assert await engine.remaining(pool) == [3, 0]
    assert await engine.split(pool, 100, 4) is False  # a rebuilt pool counts as split
    assert (await engine.deduct(pool, 3)).takes == ((0, 3),)
    await engine.rebuild(pool, [1, 2, 3, 4, 5])
    assert await engine.remaining(pool) == [1, 2, 3, 4, 5]
    assert await engine.reserve_quota(pool, "u1", 1, 1)
    await engine.drop(pool)
    assert not await engine.exists(pool)
    assert await engine.quota_used(pool, "u1") == 0
    assert await engine.split(pool, 6, 3) is True
    assert await engine.remaining(pool) == [2, 2, 2]


async def test_missing_pool(engine: StockEngine, pool: str) -> None:
    with pytest.raises(StockPoolMissing):
        await engine.deduct(pool, 1)
    with pytest.raises(StockPoolMissing):
        await engine.remaining(pool)
    with pytest.raises(StockPoolMissing):
        await engine.restore(pool, 0, 1)
    assert not await engine.exists(pool)


async def test_restore_to_a_bucket_that_does_not_exist(engine: StockEngine, pool: str) -> None:
    await engine.split(pool, 4, 2)
    with pytest.raises(StockPoolMissing):
        await engine.restore(pool, 2, 1)
    assert await engine.remaining(pool) == [2, 2]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e, p: e.deduct(p, 0), "quantity"),
        (lambda e, p: e.deduct(p, -3), "quantity"),
        (lambda e, p: e.split(p, 10, 0), "buckets"),
        (lambda e, p: e.split(p, -1, 2), "total"),
        (lambda e, p: e.deduct("bad{tag}", 1), "pool"),
        (lambda e, p: e.reserve_quota(p, "a b", 1, 2), "user"),
        (lambda e, p: e.rebuild(p, [1, -1]), "buckets"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    engine: StockEngine, pool: str, call: object, field: str
) -> None:
    await engine.split(pool, 10, 2)
    with pytest.raises(InvalidField) as refused:
        await call(engine, pool)  # type: ignore[operator]
    assert refused.value.field == field
    assert await engine.remaining(pool) == [5, 5]


async def test_quota_admits_exactly_the_limit_under_200_concurrent_calls(
    engine: StockEngine, pool: str
) -> None:
    results = await asyncio.gather(*(engine.reserve_quota(pool, "alice", 1, 2) for _ in range(200)))
    assert results.count(True) == 2
    assert await engine.quota_used(pool, "alice") == 2
    assert await engine.quota_used(pool, "bob") == 0
    assert await engine.reserve_quota(pool, "bob", 2, 2)
    assert not await engine.reserve_quota(pool, "bob", 1, 2)
    assert await engine.quota_used(pool, "bob") == 2  # the refusal added nothing


async def test_quota_release_compensates_and_never_goes_below_zero(
    engine: StockEngine, pool: str
) -> None:
    await engine.split(pool, 1, 1)
    assert await engine.reserve_quota(pool, "carol", 1, 1)
    with pytest.raises(SoldOut):
        await engine.deduct(pool, 2)
    assert await engine.release_quota(pool, "carol", 1) == 1  # compensation after refusal
    assert await engine.quota_used(pool, "carol") == 0
    assert await engine.release_quota(pool, "carol", 5) == 0
    assert await engine.quota_used(pool, "carol") == 0
    assert await engine.reserve_quota(pool, "carol", 1, 1)


async def test_metrics(engine: StockEngine, pool: str) -> None:
    labels = {"backend": engine.backend}

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        n: value(n)
        for n in (
            "incentive_stock_deduction_attempts_total",
            "incentive_stock_deductions_total",
            "incentive_stock_sold_out_total",
            "incentive_stock_deduction_seconds_count",
        )
    }
    await engine.split(pool, 1, 2)
    await engine.deduct(pool, 1)
    with pytest.raises(SoldOut):
        await engine.deduct(pool, 1)
    assert (
        value("incentive_stock_deduction_attempts_total")
        - before["incentive_stock_deduction_attempts_total"]
        == 2
    )
    assert (
        value("incentive_stock_deductions_total") - before["incentive_stock_deductions_total"] == 1
    )
    assert value("incentive_stock_sold_out_total") - before["incentive_stock_sold_out_total"] == 1
    assert (
        value("incentive_stock_deduction_seconds_count")
        - before["incentive_stock_deduction_seconds_count"]
        == 2
    )
    await engine.remaining(pool)
    gauge = [
        REGISTRY.get_sample_value("incentive_stock_bucket_remaining", {"pool": pool, "bucket": b})
        for b in ("0", "1")
    ]
    assert gauge == [0.0, 0.0]


# --------------------------------------------------------------------------- quota and stock


async def _take(engine: StockEngine, pool: str, user: str, q: int, limit: int) -> object:
    """A deduction, None (the quota refused) or "sold-out"."""
    try:
        return await engine.take_within_quota(pool, user, q, limit)
    except SoldOut:
        return "sold-out"


async def test_take_within_quota_admits_exactly_the_limit_under_200_concurrent_calls(
    engine: StockEngine, pool: str
) -> None:
    await engine.split(pool, 1000, 16)
    results = await asyncio.gather(*(_take(engine, pool, "alice", 1, 2) for _ in range(200)))
    taken = [r for r in results if isinstance(r, Deduction)]
    assert len(taken) == 2
    assert results.count(None) == 198
    assert await engine.quota_used(pool, "alice") == 2
    assert sum(await engine.remaining(pool)) == 998


async def test_take_within_quota_never_oversells_nor_passes_any_limit(
    engine: StockEngine, pool: str
) -> None:
    await engine.split(pool, 300, 16)
    users = [f"u{i}" for i in range(60)]
    calls = [_take(engine, pool, users[i % 60], random.choice((1, 2, 3)), 7) for i in range(900)]
    results = await asyncio.gather(*calls)
    taken = [r for r in results if isinstance(r, Deduction)]
    for deduction in taken:
        _check_takes(deduction, 16)
    sold = sum(d.quantity for d in taken)
    left = await engine.remaining(pool)
    assert sold + sum(left) == 300
    assert min(left) >= 0
    # A refusal (over the limit or sold out) reserved nothing: the quotas are exactly the sold.
    used = [await engine.quota_used(pool, u) for u in users]
    assert all(u <= 7 for u in used)
    assert sum(used) == sold


async def test_take_within_quota_refusals_change_nothing(engine: StockEngine, pool: str) -> None:
    await engine.split(pool, 10, 2)
    assert isinstance(await _take(engine, pool, "bob", 2, 3), Deduction)
    # Over the limit: no stock taken.
    assert await _take(engine, pool, "bob", 2, 3) is None
    assert sum(await engine.remaining(pool)) == 8
    assert await engine.quota_used(pool, "bob") == 2
    # Sold out: no quota reserved.
    assert await _take(engine, pool, "carol", 9, 100) == "sold-out"
    assert await engine.quota_used(pool, "carol") == 0
    assert sum(await engine.remaining(pool)) == 8
    with pytest.raises(StockPoolMissing):
        await engine.take_within_quota(f"{pool}-none", "bob", 1, 3)


async def test_take_within_quota_takes_across_buckets_and_undoes_with_give_back(
    engine: StockEngine, pool: str
) -> None:
    await engine.split(pool, 6, 3)  # 2 + 2 + 2: no bucket serves 5 alone
    deduction = await engine.take_within_quota(pool, "dave", 5, 5)
    assert deduction is not None
    _check_takes(deduction, 3)
    assert len(deduction.takes) == 3
    assert await engine.quota_used(pool, "dave") == 5
    # The order failed: both come back, and the buyer can buy again.
    await give_back(engine, deduction)
    assert await engine.release_quota(pool, "dave", 5) == 5
    assert await engine.remaining(pool) == [2, 2, 2]
    assert await engine.quota_used(pool, "dave") == 0
    assert await engine.take_within_quota(pool, "dave", 5, 5) is not None
