"""Coupons locked until a task is done: the activity stream unlocks them, a passed task
window expires them, and every step is a recorded transition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from incentive.coupons.models import Coupon
from incentive.coupons.runtime import expire_due
from incentive.db import Database
from tests.activities.conftest import Sender, payment
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import World
from tests.coupons.conftest import batch_row, claim, coupon_campaign, coupons_of, history

TASK = {"activity": "payment", "min_amount_fen": 1_000, "within_days": 3}


async def send(client: httpx.AsyncClient, sender: Sender, *activities: Any) -> httpx.Response:
    r = await client.post(
        "/api/v1/activities/batch", json={"activities": list(activities)}, headers=sender.headers
    )
    assert r.status_code in (200, 201), r.text
    return r


async def test_a_locked_coupon_shows_no_code_and_unlocks_on_a_qualifying_payment(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign, batch = await coupon_campaign(client, world, task=TASK)
    coupon = (await claim(client, world.cust, batch)).json()
    assert coupon["state"] == "received"
    assert coupon["code"] is None
    assert coupon["qr"] is None
    assert coupon["task_due_at"] is not None
    qr = await client.get(f"/api/v1/me/coupons/{coupon['id']}/qr", headers=world.cust.headers)
    assert qr.status_code == 409

    small = payment("p-small", world.cust.user.id, world.merchant_a, 999)
    r = await send(client, sender, small)
    outcome = [
        o for o in r.json()["activities"][0]["outcomes"] if o["campaign_id"] == campaign["id"]
    ]
    assert outcome[0]["reason"] == "below-task-minimum"
    assert (await coupons_of(db, batch))[0].state == "received"

    await send(client, sender, payment("p-ok", world.cust.user.id, world.merchant_a, 1_000))
    (row,) = await coupons_of(db, batch)
    assert row.state == "usable"
    assert await history(db, row.id) == [(None, "received"), ("received", "usable")]
    mine = await client.get(f"/api/v1/me/coupons/{row.id}", headers=world.cust.headers)
    assert mine.json()["code"] == row.code

    # A second payment finds nothing locked: the coupon unlocked once.
    r = await send(client, sender, payment("p-again", world.cust.user.id, world.merchant_a, 5000))
    outcome = [
        o for o in r.json()["activities"][0]["outcomes"] if o["campaign_id"] == campaign["id"]
    ]
    assert outcome[0]["reason"] == "no-locked-coupon"
    assert await history(db, row.id) == [(None, "received"), ("received", "usable")]


async def test_another_customers_payment_or_a_payment_before_the_claim_unlocks_nothing(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    _, batch = await coupon_campaign(client, world, task=TASK)
    await claim(client, world.cust, batch)
    before = payment("p-old", world.cust.user.id, world.merchant_a, 5_000)
    before["occurred_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    await send(client, sender, before, payment("p-other", world.ma.user.id, world.merchant_a, 5000))
    assert [c.state for c in await coupons_of(db, batch)] == ["received"]


async def test_a_completed_task_with_its_code_unlocks(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    task = {"activity": "task_completed", "task_code": "watch-video", "within_days": 1}
    _, batch = await coupon_campaign(client, world, task=task)
    await claim(client, world.cust, batch)
    done = {
        "id": "t-1",
        "type": "task_completed",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": world.cust.user.id,
        "attributes": {"task_code": "other"},
    }
    await send(client, sender, done)
    assert [c.state for c in await coupons_of(db, batch)] == ["received"]
    await send(client, sender, {**done, "id": "t-2", "attributes": {"task_code": "watch-video"}})
    assert [c.state for c in await coupons_of(db, batch)] == ["usable"]


async def test_a_task_window_that_passes_expires_the_coupon_and_frees_its_place(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    _, batch = await coupon_campaign(client, world, task=TASK, quantity=5)
    coupon = (await claim(client, world.cust, batch)).json()
    assert (await batch_row(db, batch)).stock == 4
    async with db.unit_of_work() as s:
        await s.execute(
            update(Coupon)
            .where(Coupon.id == coupon["id"])
            .values(task_due_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await expire_due(db) == 1
    (row,) = await coupons_of(db, batch)
    assert row.state == "expired"
    assert await history(db, row.id) == [(None, "received"), ("received", "expired")]
    assert (await batch_row(db, batch)).stock == 5
    # A payment after the window changes nothing.
    await send(client, sender, payment("p-late", world.cust.user.id, world.merchant_a, 5_000))
    assert (await coupons_of(db, batch))[0].state == "expired"
    assert await expire_due(db) == 0


async def test_a_usable_coupon_past_its_validity_expires(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, batch = await coupon_campaign(client, world)
    coupon = (await claim(client, world.cust, batch)).json()
    async with db.unit_of_work() as s:
        await s.execute(
            update(Coupon)
            .where(Coupon.id == coupon["id"])
            .values(valid_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await expire_due(db) == 1
    assert await history(db, coupon["id"]) == [(None, "usable"), ("usable", "expired")]
    listed = await client.get(
        f"/api/v1/coupons/{coupon['id']}/transitions", headers=world.cust.headers
    )
    assert [t["to_state"] for t in listed.json()["items"]] == ["usable", "expired"]
    assert listed.json()["items"][1]["reason"] == "validity-ended"


async def test_an_operator_revokes_an_unused_coupon_and_not_a_used_one(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, batch = await coupon_campaign(client, world)
    coupon = (await claim(client, world.cust, batch)).json()
    url = f"/api/v1/coupons/{coupon['id']}/revocation"
    assert (
        await client.post(url, json={"reason": "x"}, headers=world.ma.headers)
    ).status_code == 403
    r = await client.post(url, json={"reason": "fraud"}, headers=world.op.headers)
    assert r.status_code == 200
    assert r.json()["state"] == "revoked"
    again = await client.post(url, json={"reason": "fraud"}, headers=world.op.headers)
    assert again.status_code == 409
    assert await history(db, coupon["id"]) == [(None, "usable"), ("usable", "revoked")]


async def test_a_coupon_campaign_hears_only_its_tasks_activity_type(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    locked, _ = await coupon_campaign(client, world, task=TASK)
    plain, _ = await coupon_campaign(client, world)
    tasked = {"activity": "task_completed", "task_code": "t", "within_days": 1}
    other, _ = await coupon_campaign(client, world, task=tasked)
    r = await send(client, sender, payment("p-1", world.cust.user.id, world.merchant_a, 5_000))
    answered = {o["campaign_id"] for o in r.json()["activities"][0]["outcomes"]}
    assert locked["id"] in answered
    assert not {plain["id"], other["id"]} & answered
