from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.app import create_app
from incentive.db import Database
from incentive.flash_sales import kind
from incentive.flash_sales.models import Purchase
from incentive.settings import Settings
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
    ok = [r for r in responses if r.status_code == 201]
    assert {r.status_code for r in responses} <= {201, 409}
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
    assert again.status_code == 201  # the original status, marked as a replay
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
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
    assert r.status_code == 404  # a customer does not see an approved, inactive sale
    assert (await sales.state(draft))["remaining"] is None
    later = await sales.create(10, opens_in=timedelta(minutes=10))
    r = await sales.buy(buyer, later)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/not-on-sale")
    assert (await sales.state(later))["remaining"] == 10


async def test_a_buyer_under_the_limit_gets_sold_out_when_the_stock_is_gone(
    sales: Sales, db: Database, app: Any
) -> None:
    sale = await sales.create(5, limit=2, buckets=2)
    first = await make_customers(db, app, 5)
    assert [(await sales.buy(b, sale)).status_code for b in first] == [201] * 5
    (late,) = await make_customers(db, app, 1)
    # Many requests at once: some hold the buyer's quota while they find the stock gone, and
    # the others, refused that quota, must not be told the buyer reached a limit.
    responses = await _gather(30, [sales.buy(late, sale) for _ in range(30)])
    assert [r.status_code for r in responses] == [409] * 30
    assert Counter(r.json()["type"].rsplit("/", 1)[1] for r in responses) == {"sold-out": 30}
    assert await _committed(db, sale) == (5, 5)
    assert (await sales.state(sale))["remaining"] == 0
    assert await app.state.stock.quota_used(kind.pool_of(sale), late.user.id) == 0


async def test_concurrent_duplicates_of_one_purchase_all_get_the_first_answer(
    sales: Sales, db: Database, app: Any, settings: Settings
) -> None:
    """For each of 5 buyers, 40 clients at once send one purchase (one key, one body) to two
    API processes sharing the stock store (one process on the embedded engine, whose stock is
    its own): every one gets the first answer, 201, the copies marked as replays."""
    sale = await sales.create(100, limit=1, buckets=4)
    buyers = await make_customers(db, app, 5)
    async with contextlib.AsyncExitStack() as stack:
        clients = [sales.client]
        if settings.stock_url is not None:
            other = create_app(settings, db)
            await stack.enter_async_context(other.router.lifespan_context(other))
            transport = httpx.ASGITransport(app=other)
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://other")
                )
            )
        for buyer in buyers:
            calls = [
                sales.buy(buyer, sale, key="once", client=clients[i % len(clients)])
                for i in range(40)
            ]
            responses = await _gather(40, calls)
            answers = Counter((r.status_code, r.json().get("type")) for r in responses)
            assert answers == {(201, None): 40}, answers
            assert len({r.json()["id"] for r in responses}) == 1
            assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
            assert {r.headers.get("Idempotent-Replayed") for r in responses} == {None, "true"}
    assert await _committed(db, sale) == (5, 5)
    assert (await sales.state(sale))["remaining"] == 95
