"""Coupon rewards land in the wallet through the coupons domain (and fall back when its batch
runs out); a participant group makes first-time mean first across its campaigns."""

from __future__ import annotations

from typing import Any

import httpx

from incentive.db import Database
from tests.campaigns.conftest import World, create, move, walk
from tests.coupons.conftest import coupon_campaign, coupons_of, customers
from tests.rewards.conftest import claim, given, left, option, reward_campaign


async def test_a_coupon_reward_is_issued_into_the_wallet_and_falls_back_when_its_batch_is_out(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    _, batch = await coupon_campaign(client, world, quantity=2, per_user_limit=1)
    chain = [
        {
            "code": "cpn",
            "type": "coupon",
            "delivery": "coupon_wallet",
            "batch_id": batch,
            "stock": 5,
        },
        option("pts", stock=10),
    ]
    campaign = await reward_campaign(client, db, world, chain)
    people = await customers(db, app, 3)
    answers = [(await claim(client, p.headers, campaign["id"])).json() for p in people]
    assert [a["reward"] for a in answers] == ["cpn", "cpn", "pts"]
    assert answers[2]["chain"][0] == {"code": "cpn", "result": "skipped", "reason": "out-of-stock"}
    # The coupons are in the two wallets, usable, and the grant names each one.
    coupons = await coupons_of(db, batch)
    assert sorted(c.customer_id for c in coupons) == sorted(p.user.id for p in people[:2])
    assert {c.state for c in coupons} == {"usable"}
    assert {a["delivery_ref"] for a in answers[:2]} == {c.id for c in coupons}
    wallet = await client.get("/api/v1/me/coupons", headers=people[0].headers)
    assert [c["id"] for c in wallet.json()["items"]] == [answers[0]["delivery_ref"]]
    # The reward's own unit went back when the batch could not give a coupon.
    assert await left(client, world.op.headers, campaign["id"]) == {"cpn": 3, "pts": 9}


async def test_a_coupon_reward_needs_a_batch_that_exists_and_fits_its_delivery(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, batch = await coupon_campaign(client, world)
    for batch_id, delivery, rule in (
        ("0" * 32, "coupon_wallet", "exists"),
        (batch, "third_party", "delivery"),
    ):
        reward = {
            "code": "c",
            "type": "coupon",
            "delivery": delivery,
            "batch_id": batch_id,
            "stock": 1,
        }
        campaign = await create(client, world.op, kind="reward", rules={"rewards": [reward]})
        await walk(client, world, campaign["id"], "pending_review", "approved", owner=world.op)
        r = await move(client, world.op, campaign["id"], "active")  # the chain opens here
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "rules.rewards[0].batch_id"
        assert r.json()["errors"][0]["rule"] == rule
        status = await client.get(f"/api/v1/campaigns/{campaign['id']}", headers=world.op.headers)
        assert status.json()["status"] == "approved"  # the activation rolled back whole


async def test_first_time_means_first_in_the_participant_group(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    chain = [
        option("new", stock=10, audience="first_time"),
        option("known", stock=10, audience="returning"),
    ]
    spring = await reward_campaign(client, db, world, chain, participant_group="welcome")
    summer = await reward_campaign(client, db, world, chain, participant_group="welcome")
    alone = await reward_campaign(client, db, world, chain)
    assert (await claim(client, world.cust.headers, spring["id"])).json()["reward"] == "new"
    assert (await claim(client, world.cust.headers, summer["id"])).json()[
        "user_type"
    ] == "returning"
    assert (await claim(client, world.cust.headers, alone["id"])).json()[
        "user_type"
    ] == "first_time"
    assert await given(db, summer["id"]) == {"known": 1}
