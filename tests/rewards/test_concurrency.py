"""Storms of concurrent triggers: every reward given exactly up to its stock and no further,
the budget never below zero, one first-time reward per customer. Counted from the tables and
the ledger, on the embedded engine and on Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from incentive.db import Database
from tests.campaigns.conftest import World
from tests.flash_sales.conftest import make_customers
from tests.rewards.conftest import (
    balance,
    claim,
    customer_points,
    given,
    grants_of,
    left,
    option,
    reward_campaign,
)


async def _storm(n: int, coros: list[Any]) -> list[httpx.Response]:
    gate = asyncio.Semaphore(n)

    async def one(c: Any) -> httpx.Response:
        async with gate:
            response: httpx.Response = await c
            return response

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def test_two_thousand_triggers_by_five_hundred_customers_never_pass_stock_or_budget(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    chain = [option("A", stock=100), option("B", stock=300), option("C", stock=1_000_000)]
    # 10 points each: the budget pays 1,500 rewards, so the last 500 triggers find nothing.
    campaign = await reward_campaign(client, db, world, chain, budget=15_000, per_user_limit=4)
    people = await make_customers(db, app, 500)
    calls = [claim(client, p.headers, campaign["id"]) for p in people for _ in range(4)]
    responses = await _storm(100, calls)

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1500, 409: 500}, statuses
    assert {r.json()["type"].rsplit("/", 1)[1] for r in responses if r.status_code == 409} == {
        "no-reward-available"
    }
    assert await given(db, campaign["id"]) == {"A": 100, "B": 300, "C": 1100}
    assert await balance(db, "campaign", campaign["id"]) == 0
    assert await customer_points(db) == 15_000
    assert await left(client, world.op.headers, campaign["id"]) == {
        "A": 0,
        "B": 0,
        "C": 1_000_000 - 1100,
    }
    grants = await grants_of(db, campaign["id"])
    per_customer: dict[str, Counter[str]] = {}
    for g in grants:
        per_customer.setdefault(g.customer_id, Counter())[g.user_type] += 1
    assert all(types["first_time"] == 1 for types in per_customer.values())
    assert all(sum(types.values()) <= 4 for types in per_customer.values())
    # What each answer said is what the tables hold.
    answered = Counter(r.json()["reward"] for r in responses if r.status_code == 201)
    assert answered == {"A": 100, "B": 300, "C": 1100}


async def test_concurrent_first_triggers_of_one_customer_give_one_first_time_reward(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    chain = [
        option("welcome", stock=1_000, audience="first_time"),
        option("again", stock=1_000, audience="returning"),
    ]
    campaign = await reward_campaign(client, db, world, chain, per_user_limit=5)
    people = await make_customers(db, app, 40)
    responses = await _storm(
        100, [claim(client, p.headers, campaign["id"]) for p in people for _ in range(5)]
    )
    assert Counter(r.status_code for r in responses) == {201: 200}
    grants = await grants_of(db, campaign["id"])
    for person in people:
        mine = Counter(
            (g.user_type, g.reward_code) for g in grants if g.customer_id == person.user.id
        )
        assert mine == {("first_time", "welcome"): 1, ("returning", "again"): 4}, mine
