"""A claim gives the first reward of the chain that suits the customer's user type and can
serve; each skipped reward says why; a retried key answers the same grant."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from incentive.db import Database
from tests.activities.conftest import funding_account
from tests.campaigns.conftest import World, campaign_body, create, walk
from tests.coupons.conftest import customers
from tests.rewards.conftest import (
    balance,
    claim,
    customer_points,
    given,
    left,
    option,
    reward_campaign,
)


async def test_first_time_and_returning_customers_get_their_own_rewards(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    chain = [
        option("welcome", amount=100, stock=10, audience="first_time"),
        option("again", amount=5, stock=10, audience="returning"),
    ]
    campaign = await reward_campaign(client, db, world, chain, per_user_limit=3)
    first = await claim(client, world.cust.headers, campaign["id"])
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["user_type"], body["reward"], body["amount"], body["state"]) == (
        "first_time",
        "welcome",
        100,
        "granted",
    )
    assert body["chain"] == [{"code": "welcome", "result": "given", "reason": None}]
    second = (await claim(client, world.cust.headers, campaign["id"])).json()
    assert (second["user_type"], second["reward"]) == ("returning", "again")
    assert second["chain"] == [
        {"code": "welcome", "result": "skipped", "reason": "audience"},
        {"code": "again", "result": "given", "reason": None},
    ]
    assert await balance(db, "user", world.cust.user.id) == 105
    assert await left(client, world.op.headers, campaign["id"]) == {"welcome": 9, "again": 9}


async def test_a_retried_key_answers_the_first_grant_and_gives_nothing_more(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign = await reward_campaign(client, db, world, [option("a", stock=5)], per_user_limit=5)
    first = await claim(client, world.cust.headers, campaign["id"], key="once")
    again = await claim(client, world.cust.headers, campaign["id"], key="once")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await given(db, campaign["id"]) == {"a": 1}
    assert await balance(db, "user", world.cust.user.id) == 10


async def test_each_reward_that_cannot_serve_is_skipped_with_its_reason(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    chain = [
        option("gone", stock=0),
        option("once", stock=10, per_user_limit=1),
        option("dear", amount=10_000, stock=10),
        {
            "code": "note",
            "type": "benefit",
            "delivery": "message",
            "message": "Free drink",
            "stock": 10,
        },
        option("last", stock=10),
    ]
    campaign = await reward_campaign(client, db, world, chain, budget=100, per_user_limit=5)
    first = (await claim(client, world.cust.headers, campaign["id"])).json()
    assert first["reward"] == "once"
    second = (await claim(client, world.cust.headers, campaign["id"])).json()
    assert [(s["code"], s["reason"]) for s in second["chain"]] == [
        ("gone", "out-of-stock"),
        ("once", "limit-reached"),
        ("dear", "budget-exhausted"),
        ("note", "delivery-failed"),  # no message webhook configured
        ("last", None),
    ]
    assert second["reward"] == "last"
    # The skipped rewards' units and the customer's use of them went back.
    assert await left(client, world.op.headers, campaign["id"]) == {
        "gone": 0,
        "once": 9,
        "dear": 10,
        "note": 10,
        "last": 9,
    }


async def test_nothing_left_is_a_409_with_every_reason_and_leaves_nothing(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    chain = [option("a", stock=1), option("b", amount=500, stock=5)]
    campaign = await reward_campaign(client, db, world, chain, budget=100, per_user_limit=2)
    assert (await claim(client, world.cust.headers, campaign["id"])).status_code == 201
    refused = await claim(client, world.cust.headers, campaign["id"])
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["type"].endswith("/no-reward-available")
    assert [(s["code"], s["reason"]) for s in problem["chain"]] == [
        ("a", "out-of-stock"),
        ("b", "budget-exhausted"),
    ]
    assert await given(db, campaign["id"]) == {"a": 1}
    # The refusal did not count against the customer's limit: a restock serves them.
    assert await left(client, world.op.headers, campaign["id"]) == {"a": 0, "b": 5}
    assert await customer_points(db) == 10
    assert await balance(db, "campaign", campaign["id"]) == 90


async def test_the_campaigns_limit_per_customer_is_a_409_of_its_own(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign = await reward_campaign(client, db, world, [option("a", stock=5)])
    assert (await claim(client, world.cust.headers, campaign["id"])).status_code == 201
    again = await claim(client, world.cust.headers, campaign["id"])
    assert again.status_code == 409
    assert again.json()["type"].endswith("/reward-limit-reached")


async def test_me_rewards_and_the_report(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    chain = [option("a", stock=1), option("b", stock=10)]
    campaign = await reward_campaign(client, db, world, chain)
    people = await customers(db, app, 3)
    for person in people:
        assert (await claim(client, person.headers, campaign["id"])).status_code == 201
    mine = await client.get("/api/v1/me/rewards", headers=people[2].headers)
    assert mine.status_code == 200
    (item,) = mine.json()["items"]
    assert (item["reward"], item["chain"][0]["reason"]) == ("b", "out-of-stock")
    report = await client.get(
        f"/api/v1/campaigns/{campaign['id']}/rewards/report", headers=world.op.headers
    )
    assert report.status_code == 200, report.text
    rows = {(r["reward"], r["user_type"]): r for r in report.json()["rows"]}
    assert rows["a", "first_time"]["given"] == 1
    assert rows["b", "first_time"]["given"] == 2
    assert rows["b", "first_time"]["with_fallback"] == 2
    assert rows["b", "first_time"]["amount"] == 20
    customer_view = await client.get(
        f"/api/v1/campaigns/{campaign['id']}/rewards/report", headers=people[0].headers
    )
    assert customer_view.status_code in (403, 404)


@pytest.mark.redis
@pytest.mark.parametrize("stock_url", ["cluster"], indirect=True)
async def test_the_chain_falls_back_the_same_on_a_redis_cluster(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    chain = [option("a", stock=2), option("b", stock=3, per_user_limit=1), option("c", stock=1)]
    campaign = await reward_campaign(client, db, world, chain)
    people = await customers(db, app, 7)
    answers = [await claim(client, p.headers, campaign["id"]) for p in people]
    assert [a.status_code for a in answers] == [201] * 6 + [409]
    assert [a.json()["reward"] for a in answers[:6]] == ["a", "a", "b", "b", "b", "c"]
    assert await given(db, campaign["id"]) == {"a": 2, "b": 3, "c": 1}
    assert await left(client, world.op.headers, campaign["id"]) == {"a": 0, "b": 0, "c": 0}


async def test_a_cash_reward_is_paid_in_fen_from_a_cny_budget(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    cash = {"code": "cash", "type": "cash", "delivery": "ledger", "amount": 250, "stock": 2}
    rules = {"rewards": [cash], "budget_asset": "CNY", "per_user_limit": 5}
    wrong = await client.post(
        "/api/v1/campaigns",
        json=campaign_body("reward", rules={**rules, "budget_asset": "POINTS"}),
        headers=world.op.headers,
    )
    assert wrong.status_code == 422, wrong.text  # cash is paid in CNY, not points
    assert wrong.json()["errors"][0]["field"].startswith("rules")
    campaign = await create(client, world.op, kind="reward", rules=rules)
    cid = campaign["id"]
    await walk(client, world, cid, "pending_review", "approved", "active", owner=world.op)
    r = await client.post(
        f"/api/v1/campaigns/{cid}/budget",
        json={"amount": 600, "from_account_id": await funding_account(db, asset="CNY")},
        headers={**world.op.headers, "Idempotency-Key": "fund-cash"},
    )
    assert r.status_code == 201, r.text
    answers = [await claim(client, world.cust.headers, cid) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert [(a.json()["reward"], a.json()["amount"]) for a in answers[:2]] == [("cash", 250)] * 2
    assert await balance(db, "user", world.cust.user.id, asset="CNY") == 500
    assert await balance(db, "user", world.cust.user.id, asset="POINTS") == 0
    assert await balance(db, "campaign", cid, asset="CNY") == 100
