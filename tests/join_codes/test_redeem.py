"""Redeeming codes: exactly one merchant wins a code under concurrency, a merchant joins a
campaign once, used and voided codes are 409 with the reason, and the membership views."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from incentive.db import Database
from incentive.join_codes import service
from tests.campaigns.conftest import World, create, move, walk
from tests.factories import make_merchant, make_user
from tests.join_codes.conftest import codes_of, generate, members_of, redeem


async def _codes(client: httpx.AsyncClient, world: World, campaign: str, n: int) -> list[str]:
    r = await generate(client, world.op, campaign, n)
    assert r.status_code == 201, r.text
    listed = await client.get(
        f"/api/v1/campaigns/{campaign}/join-codes", params={"limit": n}, headers=world.op.headers
    )
    return [c["code"] for c in listed.json()["items"]]


async def test_twenty_merchants_redeeming_one_code_at_once_one_joins(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database, app: Any
) -> None:
    (code,) = await _codes(client, world, campaign, 1)
    staff = []
    for i in range(20):
        m = await make_merchant(db, code=f"R{i:02d}")
        staff.append(
            await make_user(db, app, username=f"s{i:02d}", role="merchant", merchant_id=m.id)
        )
    gate = asyncio.Event()

    async def one(actor: Any) -> httpx.Response:
        await gate.wait()
        return await redeem(client, actor, code)

    tasks = [asyncio.create_task(one(a)) for a in staff]
    await asyncio.sleep(0)
    gate.set()
    answers = await asyncio.gather(*tasks)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] + [409] * 19, [r.text for r in answers if r.status_code != 409]
    assert {r.json()["type"].rsplit("/", 1)[1] for r in answers if r.status_code == 409} == {
        "code-used"
    }
    winner = next(r.json() for r in answers if r.status_code == 201)
    # From the database: one membership, the code used by the winner.
    members = await members_of(db, campaign)
    assert [(m.merchant_id, m.code) for m in members] == [(winner["merchant_id"], code)]
    (row,) = await codes_of(db, campaign)
    assert (row.status, row.redeemed_by_merchant_id) == ("used", winner["merchant_id"])
    assert row.redeemed_by_user_id == winner["joined_by"]


async def test_one_merchant_redeeming_ten_codes_at_once_joins_once(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    codes = await _codes(client, world, campaign, 10)
    answers = await asyncio.gather(*(redeem(client, world.ma, c) for c in codes))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 9
    assert {r.json()["type"].rsplit("/", 1)[1] for r in answers if r.status_code == 409} == {
        "already-joined"
    }
    (member,) = await members_of(db, campaign)
    states = {c.code: c.status for c in await codes_of(db, campaign)}
    assert states.pop(member.code) == "used"
    assert set(states.values()) == {"unused"}


async def test_a_merchant_joins_a_campaign_once_and_its_second_code_stays_unused(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    first, second = await _codes(client, world, campaign, 2)
    r = await redeem(client, world.ma, first)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["campaign_id"], body["merchant_id"], body["code"], body["joined"]) == (
        campaign,
        world.merchant_a,
        first,
        True,
    )
    r = await redeem(client, world.ma, second)
    assert r.status_code == 409
    problem = r.json()
    assert problem["type"].endswith("/already-joined")
    assert (problem["campaign_id"], problem["code"]) == (campaign, second)
    rows = {c.code: c for c in await codes_of(db, campaign)}
    assert rows[second].status == "unused"
    assert rows[second].redeemed_by_merchant_id is None
    assert len(await members_of(db, campaign)) == 1
    # The same code again by the same merchant: its membership, replayed.
    again = await redeem(client, world.ma, first.lower()[:4] + "-" + first[4:])
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == body
    # Another merchant with the used code: code-used, nothing changes.
    r = await redeem(client, world.mb, first)
    assert r.status_code == 409
    assert r.json()["reason"] == "code-used"
    # Merchant B can still join with the second code.
    assert (await redeem(client, world.mb, second)).status_code == 201
    async with db.unit_of_work() as s:
        assert await service.has_joined(s, campaign, world.merchant_a)
        assert await service.has_joined(s, campaign, world.merchant_b)
        assert not await service.has_joined(s, "f" * 32, world.merchant_a)


async def test_void_unknown_and_malformed_codes_are_refused_with_the_reason(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    (code,) = await _codes(client, world, campaign, 1)
    r = await client.post(
        f"/api/v1/campaigns/{campaign}/join-codes/void",
        json={"codes": [code]},
        headers=world.op.headers,
    )
    assert r.json()["voided"] == 1
    r = await redeem(client, world.ma, code)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/code-void")
    assert r.json()["reason"] == "code-void"
    r = await redeem(client, world.ma, "ZZZZZZZZZZZZ")
    assert r.status_code == 404
    assert r.json()["type"].endswith("/join-code-not-found")
    for bad in ("", "AB!CD", "x" * 65):
        r = await redeem(client, world.ma, bad)
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["code"]
    r = await client.post(
        "/api/v1/join-codes/redemptions", json={"kode": code}, headers=world.ma.headers
    )
    assert r.status_code == 422
    assert await members_of(db, campaign) == []


async def test_only_merchant_staff_redeem(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    (code,) = await _codes(client, world, campaign, 1)
    for actor in (world.cust, world.op):
        assert (await redeem(client, actor, code)).status_code == 403
    assert (
        await client.post("/api/v1/join-codes/redemptions", json={"code": code})
    ).status_code == 401
    assert await members_of(db, campaign) == []
    assert {c.status for c in await codes_of(db, campaign)} == {"unused"}


async def test_no_joining_an_ended_or_cancelled_campaign(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    (code,) = await _codes(client, world, campaign, 1)
    assert (await move(client, world.op, campaign, "cancelled", "no")).status_code == 200
    r = await redeem(client, world.ma, code)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/campaign-conflict")
    assert r.json()["campaign_status"] == "cancelled"
    assert await members_of(db, campaign) == []
    assert {c.status for c in await codes_of(db, campaign)} == {"unused"}


async def test_membership_views_for_the_merchant_the_owner_and_operators(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    # A merchant campaign of A, active: B joins it.
    owned = (await create(client, world.ma))["id"]
    await walk(client, world, owned, "pending_review", "approved", "active")
    (code,) = await _codes(client, world, owned, 1)
    mine = f"/api/v1/campaigns/{owned}/membership"
    r = await client.get(mine, headers=world.mb.headers)
    assert r.status_code == 200
    assert r.json() == {
        "campaign_id": owned,
        "merchant_id": world.merchant_b,
        "joined": False,
        "code": None,
        "joined_at": None,
        "joined_by": None,
    }
    assert (await redeem(client, world.mb, code)).status_code == 201
    r = await client.get(mine, headers=world.mb.headers)
    assert r.json()["joined"] is True
    assert r.json()["code"] == code
    members = f"/api/v1/campaigns/{owned}/merchants"
    for actor in (world.op, world.ma):
        r = await client.get(members, headers=actor.headers)
        assert r.status_code == 200, r.text
        assert [m["merchant_id"] for m in r.json()["items"]] == [world.merchant_b]
    assert (await client.get(members, headers=world.mb.headers)).status_code == 403
    assert (await client.get(members, headers=world.cust.headers)).status_code == 403
    # A draft campaign the merchant may not see and did not join: 404.
    draft = (await create(client, world.op))["id"]
    r = await client.get(f"/api/v1/campaigns/{draft}/membership", headers=world.mb.headers)
    assert r.status_code == 404
    assert (await client.get(mine, headers=world.op.headers)).status_code == 403
