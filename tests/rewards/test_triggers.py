"""Activities a reward campaign lists in ``triggers`` give its reward: the outcome names the
grant, which is in ``reward_grants`` and paid in the ledger; the per-customer limit and
``min_payment_fen`` refuse with their reasons and move nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.activities.models import ActivityOutcome
from incentive.db import Database
from tests.activities.conftest import Sender, payment
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.rewards.conftest import balance, grants_of, left, option, reward_campaign


def signup(id: str, customer: str) -> dict[str, Any]:
    return {
        "id": id,
        "type": "signup",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": customer,
    }


async def send(client: httpx.AsyncClient, sender: Sender, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/v1/activities", json=body, headers=sender.headers)
    assert r.status_code in (200, 201), r.text
    answer: dict[str, Any] = r.json()
    return answer


def outcome(answer: dict[str, Any], campaign_id: str) -> dict[str, Any]:
    (found,) = [o for o in answer["outcomes"] if o["campaign_id"] == campaign_id]
    return found


async def outcome_rows(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int(await s.scalar(select(func.count()).select_from(ActivityOutcome)) or 0)


async def test_a_signup_rewards_once_per_customer_and_a_small_payment_is_refused(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    chain = [option("welcome", amount=50, stock=10)]
    campaign = await reward_campaign(
        client, db, world, chain, triggers=["signup", "payment"], min_payment_fen=1_000
    )
    cid = campaign["id"]
    alice, bob = await customers(db, app, 2)

    joined = signup("s-1", alice.user.id)
    first = await send(client, sender, joined)
    got = outcome(first, cid)
    assert (got["kind"], got["status"], got["reason"]) == ("reward", "rewarded", None)
    assert (got["detail"]["reward"], got["detail"]["user_type"]) == ("welcome", "first_time")
    (grant,) = await grants_of(db, cid)
    assert got["detail"]["grant_id"] == grant.id
    assert (grant.customer_id, grant.reward_code, grant.state) == (
        alice.user.id,
        "welcome",
        "granted",
    )
    assert grant.trigger_key.startswith("activity:")
    assert await balance(db, "user", alice.user.id) == 50
    assert await left(client, world.op.headers, cid) == {"welcome": 9}

    # The same activity again answers the first outcome and gives nothing more.
    again = await send(client, sender, joined)
    assert outcome(again, cid) == got
    # Another signup of the same customer: the campaign's limit (1) is reached.
    second = outcome(await send(client, sender, signup("s-2", alice.user.id)), cid)
    assert (second["status"], second["reason"]) == ("refused", "limit-reached")
    assert len(await grants_of(db, cid)) == 1
    assert await balance(db, "user", alice.user.id) == 50
    assert await left(client, world.op.headers, cid) == {"welcome": 9}

    # A payment below min_payment_fen: refused, nothing moved; from it: rewarded.
    small = payment("p-1", bob.user.id, world.merchant_a, 999)
    refused = outcome(await send(client, sender, small), cid)
    assert (refused["status"], refused["reason"]) == ("refused", "below-minimum")
    assert len(await grants_of(db, cid)) == 1
    assert await balance(db, "user", bob.user.id) == 0
    enough = payment("p-2", bob.user.id, world.merchant_a, 1_000)
    paid = outcome(await send(client, sender, enough), cid)
    assert paid["status"] == "rewarded"
    assert {g.customer_id for g in await grants_of(db, cid)} == {alice.user.id, bob.user.id}
    assert await balance(db, "user", bob.user.id) == 50
    assert await left(client, world.op.headers, cid) == {"welcome": 8}
    assert await outcome_rows(db) == 4  # one per (activity, campaign), the replay none


async def test_an_activity_type_the_campaign_does_not_list_gives_nothing(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await reward_campaign(
        client, db, world, [option("welcome", stock=10)], triggers=["signup"]
    )
    answer = await send(client, sender, payment("p-1", world.cust.user.id, world.merchant_a, 5_000))
    assert [o for o in answer["outcomes"] if o["campaign_id"] == campaign["id"]] == []
    assert await grants_of(db, campaign["id"]) == []
    assert await left(client, world.op.headers, campaign["id"]) == {"welcome": 10}


def activity(id: str, type: str, customer: str, **attributes: Any) -> dict[str, Any]:
    return {
        "id": id,
        "type": type,
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": customer,
        "attributes": attributes,
    }


async def test_a_completed_task_and_a_custom_activity_reward_a_campaign_listing_them(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    """A reward campaign's rules name no task: any completed task of the customer (with a
    ``task_code`` or without) gives the reward, as does any custom activity."""
    listening = await reward_campaign(
        client,
        db,
        world,
        [option("done", amount=30, stock=10)],
        triggers=["task_completed", "custom"],
        per_user_limit=2,
    )
    signup_only = await reward_campaign(
        client, db, world, [option("welcome", stock=10)], triggers=["signup"]
    )
    cid, other = listening["id"], signup_only["id"]
    alice, bob = await customers(db, app, 2)

    task = await send(client, sender, activity("t-1", "task_completed", alice.user.id))
    got = outcome(task, cid)
    assert (got["status"], got["reason"]) == ("rewarded", None)
    assert (got["detail"]["reward"], got["detail"]["user_type"]) == ("done", "first_time")
    coded = await send(
        client, sender, activity("t-2", "task_completed", bob.user.id, task_code="survey")
    )
    assert outcome(coded, cid)["status"] == "rewarded"
    made = await send(client, sender, activity("c-1", "custom", alice.user.id))
    custom = outcome(made, cid)
    assert (custom["status"], custom["detail"]["user_type"]) == ("rewarded", "returning")
    # The campaign's limit (2) still counts: alice's third activity is refused.
    third = outcome(await send(client, sender, activity("c-2", "custom", alice.user.id)), cid)
    assert (third["status"], third["reason"]) == ("refused", "limit-reached")

    by_key = {g.trigger_key: g for g in await grants_of(db, cid)}
    assert len(by_key) == 3
    assert {g.customer_id for g in by_key.values()} == {alice.user.id, bob.user.id}
    assert {got["detail"]["grant_id"], custom["detail"]["grant_id"]} <= {
        g.id for g in by_key.values()
    }
    assert all(k.startswith("activity:") for k in by_key)
    assert await balance(db, "user", alice.user.id) == 60
    assert await balance(db, "user", bob.user.id) == 30
    assert await left(client, world.op.headers, cid) == {"done": 7}
    # The campaign listening to signup only answers none of them and gives nothing.
    for answer in (task, coded, made):
        assert [o for o in answer["outcomes"] if o["campaign_id"] == other] == []
    assert await grants_of(db, other) == []
    assert await balance(db, "campaign", other) == 1_000_000
    assert await left(client, world.op.headers, other) == {"welcome": 10}
    assert await outcome_rows(db) == 4  # one per (activity, listening campaign)


async def test_a_signup_only_campaign_answers_nothing_to_tasks_and_custom_activities(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await reward_campaign(
        client, db, world, [option("welcome", stock=10)], triggers=["signup"]
    )
    cid, customer = campaign["id"], world.cust.user.id
    for body in (
        activity("t-1", "task_completed", customer, task_code="survey"),
        activity("t-2", "task_completed", customer),
        activity("c-1", "custom", customer, name="visited"),
    ):
        answer = await send(client, sender, body)
        assert [o for o in answer["outcomes"] if o["campaign_id"] == cid] == []
    assert await grants_of(db, cid) == []
    assert await outcome_rows(db) == 0
    assert await balance(db, "user", customer) == 0
    assert await left(client, world.op.headers, cid) == {"welcome": 10}
    # Its own trigger still rewards.
    joined = outcome(await send(client, sender, signup("s-1", customer)), cid)
    assert joined["status"] == "rewarded"
