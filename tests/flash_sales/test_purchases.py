from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.db import Database
from incentive.flash_sales.models import Purchase
from tests.flash_sales.conftest import Sales, make_customers


async def _committed(db: Database, sale_id: str) -> tuple[int, int]:
    async with db.unit_of_work() as s:
        row = (
            await s.execute(
                select(func.count(), func.coalesce(func.sum(Purchase.quantity), 0)).where(
                    Purchase.flash_sale_id == sale_id
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def _gather(n: int, coros: list[Any]) -> list[httpx.Response]:
    gate = asyncio.Semaphore(n)

    async def one(c: Any) -> httpx.Response:
        async with gate:
            r: httpx.Response = await c
            return r

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def test_5000_attempts_on_stock_1000_sell_exactly_1000(
    sales: Sales, db: Database, app: Any
) -> None:
    sale = await sales.create(1_000, limit=10, buckets=16)
    buyers = await make_customers(db, app, 500)
    attempts = [sales.buy(b, sale) for b in buyers for _ in range(10)]
    random.Random(1).shuffle(attempts)
    responses = await _gather(200, attempts)
    codes = Counter(r.status_code for r in responses)
    assert codes[201] == 1_000, codes
    assert codes[409] == 4_000, codes
    assert all(r.json()["type"].endswith("/sold-out") for r in responses if r.status_code == 409)
    state = await sales.state(sale)
    assert state["remaining"] == 0
    assert state["buckets"] == [0] * 16
    assert state["sold"] == 1_000
    assert await _committed(db, sale) == (1_000, 1_000)
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1_000


async def test_mixed_quantities_with_retried_keys_sell_exactly_the_stock(
    sales: Sales, db: Database, app: Any
) -> None:
    sale = await sales.create(500, limit=50, buckets=8)
    buyers = await make_customers(db, app, 100)
    rnd = random.Random(7)
    plan = [(b, rnd.randint(1, 5), f"k{i}") for i, b in enumerate(buyers * 3)]
    # Every request is sent twice at once, and a third of them once more afterwards.
    first = [sales.buy(b, sale, q, key) for b, q, key in plan for _ in range(2)]
    rnd.shuffle(first)
    responses = await _gather(100, first)
    again = [sales.buy(b, sale, q, key) for b, q, key in plan if rnd.random() < 0.33]
    responses += await _gather(100, again)
    # Then single units until the stock is gone, so that demand surely exceeds it.
    tail = [sales.buy(b, sale, 1) for b in buyers]
    responses += await _gather(100, tail)
    ok = [r for r in responses if r.status_code in (200, 201)]
    assert {r.status_code for r in responses} <= {200, 201, 409}
    by_id: dict[str, int] = {}
    for r in ok:
        by_id[r.json()["id"]] = r.json()["quantity"]
    count, units = await _committed(db, sale)
    assert units == 500
    assert count == len(by_id)
    assert sum(by_id.values()) == 500
    state = await sales.state(sale)
    assert state["remaining"] == 0
    assert state["sold"] == 500


async def test_one_buyer_200_concurrent_requests_limit_2(
    sales: Sales, db: Database, app: Any
) -> None:
    sale = await sales.create(100, limit=2, buckets=4)
    (buyer,) = await make_customers(db, app, 1)
    responses = await _gather(200, [sales.buy(buyer, sale) for _ in range(200)])
    codes = Counter(r.status_code for r in responses)
    assert codes[201] == 2, codes
    assert codes[409] == 198
    assert all(
        r.json()["type"].endswith("/limit-exceeded") for r in responses if r.status_code == 409
    )
    assert await _committed(db, sale) == (2, 2)
    assert (await sales.state(sale))["remaining"] == 98


async def test_replay_and_key_reuse_and_bad_input(sales: Sales, db: Database, app: Any) -> None:
    sale = await sales.create(10, limit=5, buckets=2)
    (buyer,) = await make_customers(db, app, 1)
    first = await sales.buy(buyer, sale, 2, key="same")
    assert first.status_code == 201
    again = await sales.buy(buyer, sale, 2, key="same")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = await sales.buy(buyer, sale, 3, key="same")
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency-key-reused")
    url = f"/api/v1/flash-sales/{sale}/purchases"
    for body, headers, field in (
        ({"quantity": 0}, {"Idempotency-Key": "x"}, "quantity"),
        ({"quantity": "1"}, {"Idempotency-Key": "x"}, "quantity"),
        ({"quantity": 1}, {}, "Idempotency-Key"),
    ):
        r = await sales.client.post(url, json=body, headers={**buyer.headers, **headers})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field
    assert sales.operator.headers
    r = await sales.buy(sales.operator, sale)
    assert r.status_code == 403
    assert await _committed(db, sale) == (1, 2)
    assert (await sales.state(sale))["remaining"] == 8


async def test_not_on_sale_before_activation_or_window(
    sales: Sales, db: Database, app: Any
) -> None:
    from datetime import timedelta

    (buyer,) = await make_customers(db, app, 1)
    draft = await sales.create(10, activate=False)
    r = await sales.buy(buyer, draft)
    assert r.status_code in (404, 409)
    later = await sales.create(10, opens_in=timedelta(minutes=10))
    r = await sales.buy(buyer, later)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/not-on-sale")
    assert (await sales.state(later))["remaining"] == 10
