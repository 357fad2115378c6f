"""The till: verify, hold, redeem exactly once, undo within the window; only at merchants
of the coupon's campaign."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from incentive.coupons.models import Coupon, CouponRedemption
from incentive.db import Database
from tests.campaigns.conftest import World
from tests.coupons.conftest import claim, coupon_campaign, history
from tests.factories import Actor, make_user

_keys = itertools.count()


async def redeem(
    client: httpx.AsyncClient, staff: Actor, code: str, amount: int, key: str | None = None
) -> httpx.Response:
    return await client.post(
        "/api/v1/till/redemptions",
        json={"code": code, "amount_fen": amount},
        headers={**staff.headers, "Idempotency-Key": key or f"till-{next(_keys)}"},
    )


async def standing(db: Database, coupon_id: str) -> int:
    async with db.unit_of_work() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(CouponRedemption)
            .where(CouponRedemption.coupon_id == coupon_id, CouponRedemption.undone_at.is_(None))
        )
    return int(n or 0)


async def usable_coupon(client: httpx.AsyncClient, world: World, **rules: Any) -> dict[str, Any]:
    _, batch = await coupon_campaign(client, world, **rules)
    coupon: dict[str, Any] = (await claim(client, world.cust, batch)).json()
    return coupon


async def test_verify_answers_the_discount_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    coupon = await usable_coupon(client, world, min_spend_fen=2_000)
    code = coupon["code"].lower()[:5] + "-" + coupon["code"][5:]  # as a cashier might type it
    r = await client.post(
        "/api/v1/till/verifications",
        json={"code": code, "amount_fen": 3_000},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["discount_fen"] == 500
    assert r.json()["coupon_id"] == coupon["id"]
    low = await client.post(
        "/api/v1/till/verifications",
        json={"code": coupon["code"], "amount_fen": 1_999},
        headers=world.ma.headers,
    )
    assert low.status_code == 409
    assert low.json()["type"].endswith("min-spend-not-met")
    unknown = await client.post(
        "/api/v1/till/verifications", json={"code": "ZZZZZZZZZZ"}, headers=world.ma.headers
    )
    assert unknown.status_code == 404
    assert await history(db, coupon["id"]) == [(None, "usable")]


async def test_a_coupon_of_merchant_a_is_refused_at_merchant_b(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    coupon = await usable_coupon(client, world)
    for path in ("verifications", "holds", "redemptions"):
        r = await client.post(
            f"/api/v1/till/{path}",
            json={"code": coupon["code"], "amount_fen": 5_000},
            headers={**world.mb.headers, "Idempotency-Key": f"b-{path}"},
        )
        assert r.status_code == 409, (path, r.text)
        assert r.json()["type"].endswith("coupon-other-merchant")
    assert await standing(db, coupon["id"]) == 0
    customer = await client.post(
        "/api/v1/till/verifications", json={"code": coupon["code"]}, headers=world.cust.headers
    )
    assert customer.status_code == 403


async def test_one_coupon_at_ten_tills_at_once_is_redeemed_once(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    coupon = await usable_coupon(client, world)
    tills = [
        await make_user(db, app, username=f"till{i}", role="merchant", merchant_id=world.merchant_a)
        for i in range(10)
    ]
    answers = await asyncio.gather(*(redeem(client, t, coupon["code"], 5_000) for t in tills))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 9, [a.text for a in answers]
    assert await standing(db, coupon["id"]) == 1
    states = [to for _, to in await history(db, coupon["id"])]
    assert states == ["usable", "redeemed"]


async def test_the_same_commit_again_answers_the_first_result(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    coupon = await usable_coupon(client, world)
    first = await redeem(client, world.ma, coupon["code"], 5_000, key="sale-1")
    again = await redeem(client, world.ma, coupon["code"], 5_000, key="sale-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other_sale = await redeem(client, world.ma, coupon["code"], 5_000, key="sale-2")
    assert other_sale.status_code == 409
    assert other_sale.json()["state"] == "redeemed"
    assert await standing(db, coupon["id"]) == 1


async def test_a_hold_keeps_other_tills_off_until_it_lapses(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    coupon = await usable_coupon(client, world, owner="operator")
    # Merchant B joins the operator's campaign with a join code: both may redeem now.
    campaign_id = coupon["campaign_id"]
    r = await client.post(
        f"/api/v1/campaigns/{campaign_id}/join-codes",
        json={"count": 1},
        headers={**world.op.headers, "Idempotency-Key": "codes"},
    )
    assert r.status_code == 201, r.text
    export = await client.get(
        f"/api/v1/campaigns/{campaign_id}/join-codes/export", headers=world.op.headers
    )
    join_code = export.text.splitlines()[1].split(",")[0]
    joined = await client.post(
        "/api/v1/join-codes/redemptions", json={"code": join_code}, headers=world.mb.headers
    )
    assert joined.status_code == 201, joined.text

    held = await client.post(
        "/api/v1/till/holds",
        json={"code": coupon["code"], "amount_fen": 5_000},
        headers=world.mb.headers,
    )
    assert held.status_code == 200, held.text
    assert held.json()["state"] == "held"
    # Merchant A (not joined: the campaign is the operator's) is refused outright.
    assert (await redeem(client, world.ma, coupon["code"], 5_000)).status_code == 409
    other = await make_user(db, app, username="b2", role="merchant", merchant_id=world.merchant_b)
    # The hold is merchant B's: another of its tills may commit it.
    async with db.unit_of_work() as s:
        await s.execute(
            update(Coupon)
            .where(Coupon.id == coupon["id"])
            .values(held_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    done = await redeem(client, other, coupon["code"], 5_000)
    assert done.status_code == 201, done.text
    assert [to for _, to in await history(db, coupon["id"])] == ["usable", "held", "redeemed"]


async def test_undo_within_the_window_and_not_after(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    coupon = await usable_coupon(client, world)
    done = (await redeem(client, world.ma, coupon["code"], 5_000)).json()
    undo = f"/api/v1/till/redemptions/{done['id']}/undo"
    assert (await client.post(undo, headers=world.mb.headers)).status_code == 404
    r = await client.post(undo, headers=world.ma.headers)
    assert r.status_code == 200
    assert r.json()["undone_at"] is not None
    assert (await client.post(undo, headers=world.ma.headers)).status_code == 200
    assert await standing(db, coupon["id"]) == 0
    again = (await redeem(client, world.ma, coupon["code"], 5_000)).json()
    async with db.unit_of_work() as s:
        await s.execute(
            update(CouponRedemption)
            .where(CouponRedemption.id == again["id"])
            .values(redeemed_at=datetime.now(UTC) - timedelta(hours=1))
        )
    late = await client.post(
        f"/api/v1/till/redemptions/{again['id']}/undo", headers=world.ma.headers
    )
    assert late.status_code == 409
    assert late.json()["type"].endswith("undo-window-passed")
    assert await standing(db, coupon["id"]) == 1
    listed = await client.get("/api/v1/till/redemptions", headers=world.ma.headers)
    # newest first (the second was dated an hour back)
    assert [x["id"] for x in listed.json()["items"]] == [done["id"], again["id"]]
    assert [to for _, to in await history(db, coupon["id"])] == [
        "usable",
        "redeemed",
        "usable",
        "redeemed",
    ]


async def test_a_rate_coupon_takes_its_capped_share_and_an_expired_one_is_refused(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    coupon = await usable_coupon(
        client, world, face_value_fen=None, rate_bp=1_000, max_discount_fen=300
    )
    for amount, off in ((1_000, 100), (2_999, 299), (10_000, 300)):
        r = await client.post(
            "/api/v1/till/verifications",
            json={"code": coupon["code"], "amount_fen": amount},
            headers=world.ma.headers,
        )
        assert r.json()["discount_fen"] == off
    async with db.unit_of_work() as s:
        await s.execute(
            update(Coupon)
            .where(Coupon.id == coupon["id"])
            .values(valid_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    r = await redeem(client, world.ma, coupon["code"], 5_000)
    assert r.status_code == 409
    assert r.json()["state"] == "expired"
