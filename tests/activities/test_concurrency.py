"""Issue 12's proof: 50 concurrent clients send 5,000 payments (a tenth of them again with the
same id, some with a reused id and another body, some refunded) against a budget that covers
only part of them and a per-customer daily cap. Everything is checked from the database and
the ledger afterwards: the budget ends at or above zero, the ledger is conserved, every payment
has one activity and one outcome, what was rebated is what the ledger moved, each customer's
balance and cap hold, and every refund reversed exactly its share."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.activities.models import Activity, ActivityOutcome
from incentive.db import Database
from incentive.ledger.models import Account, Transfer
from incentive.rebates.models import RebatePayout, RebateTotal
from tests.activities.conftest import (
    Sender,
    budget_left,
    cny_total,
    payment,
    rebate_campaign,
    refund,
)
from tests.campaigns.conftest import World

CLIENTS = 50
PAYMENTS = 5_000
CUSTOMERS = 10
BUDGET = 500_000  # runs out: the merchant parts go on after the customers hit their cap
DAILY_CAP = 1_000  # reached while the first requests of every client are still in flight


async def test_concurrent_payments_retries_and_refunds_keep_every_guarantee(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    rng = random.Random(12)
    campaign = await rebate_campaign(
        client, db, world, budget=BUDGET, customer_daily_cap_fen=DAILY_CAP
    )
    a, b = world.merchant_a, world.merchant_b
    bodies = [
        payment(
            f"pay-{i}",
            f"cust-{rng.randrange(CUSTOMERS)}",
            a if rng.random() < 0.95 else b,
            rng.randrange(500, 40_000),
            **({"staff": "staff-1"} if rng.random() < 0.3 else {}),
        )
        for i in range(PAYMENTS)
    ]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    first: dict[str, dict[str, Any]] = {}
    replays: list[tuple[str, dict[str, Any]]] = []
    refunds: dict[str, list[int]] = defaultdict(list)  # payment id -> refund amounts sent
    statuses: dict[int, int] = defaultdict(int)

    async def post(body: dict[str, Any]) -> httpx.Response:
        r = await client.post("/api/v1/activities", json=body, headers=sender.headers)
        statuses[r.status_code] += 1
        return r

    async def worker(n: int) -> None:
        local = random.Random(n)
        while not queue.empty():
            body = queue.get_nowait()
            r = await post(body)
            assert r.status_code == 201, r.text
            first[body["id"]] = r.json()
            roll = local.random()
            if roll < 0.10:  # a retry with the same id: the first answer, nothing moves
                again = await post(body)
                assert again.status_code == 200, again.text
                replays.append((body["id"], again.json()))
            elif roll < 0.12:  # the same id with another body
                other = await post({**body, "amount_fen": body["amount_fen"] + 1})
                assert other.status_code == 409, other.text
            elif roll < 0.18:  # one or two partial refunds
                for k in range(local.choice((1, 2))):
                    amount = local.randrange(1, body["amount_fen"])
                    r = await post(refund(f"{body['id']}-r{k}", body, amount))
                    assert r.status_code == 201, r.text
                    refunds[body["id"]].append(amount)

    await asyncio.gather(*(worker(n) for n in range(CLIENTS)))
    assert statuses[500] == 0

    # --- from the database and the ledger, not from the answers
    async with db.unit_of_work() as s:
        payments = dict(
            (
                await s.execute(
                    select(Activity.external_id, func.count())
                    .where(Activity.type == "payment")
                    .group_by(Activity.external_id)
                )
            ).all()
        )
        outcomes = (
            await s.execute(
                select(
                    Activity.external_id,
                    ActivityOutcome.status,
                    ActivityOutcome.reason,
                    ActivityOutcome.detail,
                )
                .join(ActivityOutcome, ActivityOutcome.activity_id == Activity.id)
                .where(Activity.type == "payment", ActivityOutcome.campaign_id == campaign["id"])
            )
        ).all()
        rebate_moved = int(
            await s.scalar(
                select(func.coalesce(func.sum(Transfer.amount), 0)).where(Transfer.kind == "rebate")
            )
            or 0
        )
        reversal_moved = int(
            await s.scalar(
                select(func.coalesce(func.sum(Transfer.amount), 0)).where(
                    Transfer.kind == "rebate.reversal"
                )
            )
            or 0
        )
        balances = dict(
            (
                await s.execute(
                    select(Account.owner_id, Account.balance).where(
                        Account.owner_type == "user", Account.asset == "CNY"
                    )
                )
            ).all()
        )
        payouts = {p.payment_id: p for p in await s.scalars(select(RebatePayout))}
        totals = list(await s.scalars(select(RebateTotal).where(RebateTotal.party == "customer")))

    assert payments == {b["id"]: 1 for b in bodies}
    by_payment = {ext: (status, reason, detail) for ext, status, reason, detail in outcomes}
    assert len(outcomes) == PAYMENTS == len(by_payment)
    rewarded = {k: v[2] for k, v in by_payment.items() if v[0] == "rewarded"}
    reasons = {v[1] for v in by_payment.values() if v[0] == "refused"}
    assert "budget-exhausted" in reasons  # the budget really ran out
    assert "not-joined" in reasons
    assert 0 < len(rewarded) < PAYMENTS
    paid = sum(d["total_fen"] for d in rewarded.values())
    assert paid == rebate_moved
    assert set(payouts) == set(rewarded)
    left = await budget_left(db, campaign)
    assert left >= 0
    assert left == BUDGET - rebate_moved + reversal_moved
    assert await cny_total(db) == 0
    # Each answer a client got for a payment is what the database holds; replays repeat it.
    for external_id, answer in first.items():
        [mine] = [o for o in answer["outcomes"] if o["campaign_id"] == campaign["id"]] or [None]
        if mine is not None:
            assert (mine["status"], mine["reason"]) == by_payment[external_id][:2]
    for external_id, again in replays:
        assert again["outcomes"] == first[external_id]["outcomes"]
    # Refunds reverse exactly the refunded share of each part (no one spent anything here).
    expected_balance: dict[str, int] = defaultdict(int)
    for external_id, detail in rewarded.items():
        body = next(b for b in bodies if b["id"] == external_id)
        share = min(body["amount_fen"], sum(refunds.get(external_id, [])))
        reversed_user = detail["user_fen"] * share // body["amount_fen"]
        p = payouts[external_id]
        assert p.refunded_fen == share
        assert p.reversed_user_fen == reversed_user
        assert p.reversed_merchant_fen == detail["merchant_fen"] * share // body["amount_fen"]
        assert p.reversed_staff_fen == detail["staff_fen"] * share // body["amount_fen"]
        assert p.shortfall_fen == 0
        expected_balance[body["customer"]] += detail["user_fen"] - reversed_user
    for customer, expected in expected_balance.items():
        assert balances.get(customer, 0) == expected, customer
    # No customer was paid past the daily cap (counted before refunds).
    assert all(t.paid_fen <= DAILY_CAP for t in totals)
    paid_per_day: dict[tuple[str, str], int] = defaultdict(int)
    for external_id, detail in rewarded.items():
        body = next(b for b in bodies if b["id"] == external_id)
        day = (datetime.fromisoformat(body["occurred_at"]) + timedelta(hours=8)).date()
        paid_per_day[body["customer"], day.isoformat()] += detail["user_fen"]
    assert max(paid_per_day.values()) == DAILY_CAP  # the cap was reached, never passed


async def test_concurrent_batches_pay_set_based_and_never_overdraw_the_budget(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    """20 clients send 50 batches of 20 payments (300 fen of rebate each) against a budget
    for about half of them: batches are paid whole while the budget lasts, then one by one."""
    budget = 150_000 + 3 * 300 + 123  # 25 whole batches, then 3 payments of the next one
    campaign = await rebate_campaign(client, db, world, budget=budget)
    batches = [
        [payment(f"b{n}-{i}", f"cust-{i % 7}", world.merchant_a, 10_000) for i in range(20)]
        for n in range(50)
    ]

    async def send(n: int) -> None:
        for batch in batches[n::20]:
            r = await client.post(
                "/api/v1/activities/batch", json={"activities": batch}, headers=sender.headers
            )
            assert r.status_code == 201, r.text

    await asyncio.gather(*(send(n) for n in range(20)))
    async with db.unit_of_work() as s:
        outcomes = dict(
            (
                await s.execute(
                    select(ActivityOutcome.status, func.count())
                    .where(ActivityOutcome.campaign_id == campaign["id"])
                    .group_by(ActivityOutcome.status)
                )
            ).all()
        )
        moved = int(
            await s.scalar(
                select(func.coalesce(func.sum(Transfer.amount), 0)).where(Transfer.kind == "rebate")
            )
            or 0
        )
    left = await budget_left(db, campaign)
    assert sum(outcomes.values()) == 1_000
    assert outcomes["rewarded"] == 503  # the budget paid all it could, to the last 300
    assert moved == 503 * 300 == budget - left
    assert 0 <= left < 300
    assert await cny_total(db) == 0
