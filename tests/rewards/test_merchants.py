"""A merchant's reward campaign rewards what happens at that merchant and gives coupons of
that merchant's own campaigns; a reward meant for the other user type is no fallback."""

from __future__ import annotations

from typing import Any

import httpx

from incentive.db import Database
from tests.activities.conftest import Sender, payment
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import World, create, move, walk
from tests.coupons.conftest import coupon_campaign
from tests.rewards.conftest import claim, given, option, points_funding, reward_campaign


async def _merchant_reward(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    rewards: list[dict[str, Any]],
    **rules: Any,
) -> tuple[dict[str, Any], httpx.Response]:
    """Merchant A's reward campaign, reviewed; the answer of its activation."""
    campaign = await create(client, world.ma, kind="reward", rules={"rewards": rewards, **rules})
    await walk(client, world, campaign["id"], "pending_review", "approved")
    return campaign, await move(client, world.ma, campaign["id"], "active")


async def test_a_merchants_campaign_rewards_payments_at_that_merchant_only(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign, activated = await _merchant_reward(
        client, db, world, [option("pts", stock=10)], triggers=["payment"], per_user_limit=5
    )
    assert activated.status_code == 200, activated.text
    r = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/budget",
        json={"amount": 1_000, "from_account_id": await points_funding(db)},
        headers={**world.op.headers, "Idempotency-Key": "fund-m"},
    )
    assert r.status_code == 201, r.text
    outcomes = {}
    for id, merchant in (("p-b", world.merchant_b), ("p-a", world.merchant_a)):
        r = await client.post(
            "/api/v1/activities",
            json=payment(id, world.cust.user.id, merchant, 5_000),
            headers=sender.headers,
        )
        assert r.status_code == 201, r.text
        (found,) = [o for o in r.json()["outcomes"] if o["campaign_id"] == campaign["id"]]
        outcomes[id] = (found["status"], found["reason"])
    assert outcomes == {"p-b": ("refused", "other-merchant"), "p-a": ("rewarded", None)}
    assert await given(db, campaign["id"]) == {"pts": 1}


async def test_a_merchants_coupon_reward_must_come_from_its_own_campaigns(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, theirs = await coupon_campaign(client, world, owner="platform")
    _, ours = await coupon_campaign(client, world)  # merchant A's
    for batch, status in ((theirs, 422), (ours, 200)):
        reward = {"code": "c", "type": "coupon", "delivery": "coupon_wallet", "batch_id": batch}
        _, activated = await _merchant_reward(client, db, world, [{**reward, "stock": 3}])
        assert activated.status_code == status, activated.text
        if status == 422:
            (error,) = activated.json()["errors"]
            assert (error["field"], error["rule"]) == ("rules.rewards[0].batch_id", "same-merchant")


async def test_a_reward_for_the_other_user_type_is_not_counted_as_a_fallback(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    chain = [option("new", stock=5, audience="first_time"), option("again", stock=5)]
    campaign = await reward_campaign(client, db, world, chain, per_user_limit=2)
    for _ in range(2):
        assert (await claim(client, world.cust.headers, campaign["id"])).status_code == 201
    r = await client.get(
        f"/api/v1/campaigns/{campaign['id']}/rewards/report", headers=world.op.headers
    )
    rows = {(row["reward"], row["user_type"]): row for row in r.json()["rows"]}
    assert (
        rows["again", "returning"]["with_fallback"],
        rows["again", "returning"]["fallbacks"],
    ) == (
        0,
        0,
    )
