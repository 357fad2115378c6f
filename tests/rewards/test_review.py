"""Bugs found in review of the rewards domain and ``stock.holds``, one regression test each
(every one failed before its fix). Both stock engines, both databases."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from incentive.campaigns import service as campaign_service
from incentive.coupons import calls
from incentive.db import Database
from incentive.events.backends.inprocess import InProcessTransport
from incentive.events.relay import Relay
from incentive.rewards import service as rewards_service
from incentive.rewards.grants import pool_of
from incentive.rewards.rules import RewardOption
from incentive.settings import Settings
from incentive.stock import StockEngine
from incentive.stock.holds import give_back_if_committed, keep_if_committed, settled
from tests.activities.conftest import Sender
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import World
from tests.coupons.fake_provider import FakeProvider
from tests.coupons.test_providers import configure, provider_campaign, register, settle
from tests.rewards.conftest import claim, given, grants_of, left, option, reward_campaign

_pools = itertools.count()


class Boom(Exception):
    pass


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No embedded worker: each test sends provider calls and relays the outbox itself."""
    return settings.model_copy(update={"embedded_worker": False})


async def _level(engine: StockEngine, pool: str) -> int:
    return sum(await engine.remaining(pool))


async def test_a_savepoint_decides_only_for_what_was_held_or_released_inside_it(
    app: Any, db: Database
) -> None:
    """SQLAlchemy tells ``after_commit``/``after_rollback`` for a savepoint too: a savepoint
    rolled back gave back the outer transaction's held units (oversell once it commits) and
    dropped its releases (stock never returned); a savepoint released forgot its holds (a
    later rollback of the transaction stranded them)."""
    engine: StockEngine = app.state.stock
    pool = f"review:{next(_pools)}:{datetime.now(UTC).timestamp()}"
    await engine.split(pool, 10, 2)

    async def rolled_back_savepoint(session: Any) -> None:
        with contextlib.suppress(Boom):
            async with session.begin_nested():
                await session.execute(text("SELECT 1"))
                raise Boom

    # 1. Held by the transaction, a savepoint rolls back, the transaction commits: kept.
    kept = await engine.take_within_quota(pool, "u1", 1, 5)
    assert kept is not None
    async with db.unit_of_work() as s:
        await s.execute(text("SELECT 1"))
        keep_if_committed(s, engine, kept, "u1")
        await rolled_back_savepoint(s)
    await settled()
    assert await _level(engine, pool) == 9
    assert await engine.quota_used(pool, "u1") == 1

    # 2. Released by the transaction, a savepoint rolls back, the transaction commits:
    #    the unit and the quota go back.
    async with db.unit_of_work() as s:
        await s.execute(text("SELECT 1"))
        give_back_if_committed(s, engine, kept, "u1")
        await rolled_back_savepoint(s)
    await settled()
    assert await _level(engine, pool) == 10
    assert await engine.quota_used(pool, "u1") == 0

    # 3. Held inside a savepoint that is released, then the transaction rolls back: given
    #    back.
    inner = await engine.take_within_quota(pool, "u2", 1, 5)
    assert inner is not None
    with contextlib.suppress(Boom):
        async with db.unit_of_work() as s:
            async with s.begin_nested():
                await s.execute(text("SELECT 1"))
                keep_if_committed(s, engine, inner, "u2")
            raise Boom
    await settled()
    assert await _level(engine, pool) == 10
    assert await engine.quota_used(pool, "u2") == 0

    # 4. Released inside a savepoint that is released: given back only at the commit, and
    #    not at all when the transaction rolls back.
    taken = await engine.take_within_quota(pool, "u3", 1, 5)
    assert taken is not None
    with contextlib.suppress(Boom):
        async with db.unit_of_work() as s:
            async with s.begin_nested():
                await s.execute(text("SELECT 1"))
                give_back_if_committed(s, engine, taken, "u3")
            await settled()
            assert await _level(engine, pool) == 9  # not before the commit
            raise Boom
    await settled()
    assert await _level(engine, pool) == 9
    assert await engine.quota_used(pool, "u3") == 1

    # 5. Held inside a savepoint that rolls back: given back at once, the transaction
    #    commits the rest.
    async with db.unit_of_work() as s:
        with contextlib.suppress(Boom):
            async with s.begin_nested():
                await s.execute(text("SELECT 1"))
                keep_if_committed(s, engine, taken, "u3")
                raise Boom
    await settled()
    assert await _level(engine, pool) == 10
    assert await engine.quota_used(pool, "u3") == 0


async def test_an_activity_reward_whose_transaction_rolls_back_gives_its_unit_back(
    client: httpx.AsyncClient, db: Database, app: Any, world: World, sender: Sender
) -> None:
    """A signup rewarded by the first of two campaigns, the second's stock lost from the
    store: the activity answers 503 and nothing is recorded, so the first campaign's unit
    must be back in its stock (it stayed taken: the hold was forgotten when the grant's
    savepoint was released)."""
    campaigns = [
        await reward_campaign(client, db, world, [option("a", stock=5)], triggers=["signup"])
        for _ in range(2)
    ]
    first, second = sorted(c["id"] for c in campaigns)  # offered in id order
    await app.state.stock.drop(pool_of(second, "a"))
    r = await client.post(
        "/api/v1/activities",
        json={
            "id": "signup-1",
            "type": "signup",
            "occurred_at": datetime.now(UTC).isoformat(),
            "customer": world.cust.user.id,
        },
        headers=sender.headers,
    )
    assert r.status_code == 503, r.text
    await settled()
    assert await given(db, first) == {}
    assert (await left(client, world.op.headers, first))["a"] == 5


async def refusing_provider_batch(
    client: httpx.AsyncClient, db: Database, app: Any, world: World, fake: FakeProvider
) -> str:
    """A provider's coupon batch (ours: merchant A's coupon campaign) whose provider then runs
    out, so every coupon asked of it is refused."""
    await configure(db, app)
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    fake.set_batch("B1", stock=0)
    return batch


def third_party(batch: str, code: str = "tp", stock: int = 5) -> dict[str, Any]:
    return {
        "code": code,
        "type": "coupon",
        "delivery": "third_party",
        "batch_id": batch,
        "stock": stock,
    }


async def refuse_and_fall_back(db: Database) -> None:
    """The provider calls answered (refused: ``coupon.failed``), the outbox relayed."""
    sender = calls.Sender(db)
    try:
        await settle(db, sender)
    finally:
        await sender.aclose()
    await Relay(db, InProcessTransport(db)).drain()
    await settled()


async def test_a_failed_delivery_falls_back_to_the_rewards_not_tried_after_a_reorder(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    """An operator moves a third-party reward to the end of the chain (its provider is out):
    the grants already holding one of its coupons must still fall back to the rewards they
    never tried — not only to those now placed after it (none: the customer got nothing)."""
    with FakeProvider(credentials="acme-key") as fake:
        batch = await refusing_provider_batch(client, db, app, world, fake)
        chain = [third_party(batch), option("b", stock=5), option("c", stock=5)]
        campaign = await reward_campaign(client, db, world, chain)
        r = await claim(client, world.cust.headers, campaign["id"])
        assert r.status_code == 201, r.text
        assert (r.json()["reward"], r.json()["state"]) == ("tp", "delivering")
        moved = await client.put(
            f"/api/v1/campaigns/{campaign['id']}/rewards/order",
            json={"codes": ["b", "c", "tp"]},
            headers=world.op.headers,
        )
        assert moved.status_code == 200, moved.text
        await refuse_and_fall_back(db)
    (grant,) = await grants_of(db, campaign["id"])
    assert (grant.reward_code, grant.state) == ("b", "granted")
    assert [(s["code"], s["result"]) for s in grant.chain] == [
        ("tp", "given"),
        ("tp", "failed"),
        ("b", "given"),
    ]
    assert await left(client, world.op.headers, campaign["id"]) == {"b": 4, "c": 5, "tp": 5}


async def test_a_grant_that_ends_with_nothing_given_does_not_count_against_the_customer(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    """The provider refused the coupon and nothing after it could serve: the customer got
    nothing, so the campaign's limit of one reward per customer must not refuse their next
    claim (it answered 409 reward-limit-reached), and they are still a first-time
    participant."""
    with FakeProvider(credentials="acme-key") as fake:
        batch = await refusing_provider_batch(client, db, app, world, fake)
        chain = [third_party(batch), option("b", stock=0, audience="first_time")]
        campaign = await reward_campaign(client, db, world, chain, participant_group="spring")
        first = await claim(client, world.cust.headers, campaign["id"])
        assert first.status_code == 201, first.text
        await refuse_and_fall_back(db)
    (failed,) = await grants_of(db, campaign["id"])
    assert (failed.reward_code, failed.state) == (None, "failed")
    restocked = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/rewards/b/restocks",
        json={"units": 1},
        headers={**world.op.headers, "Idempotency-Key": "restock-b"},
    )
    assert restocked.status_code == 201, restocked.text
    again = await claim(client, world.cust.headers, campaign["id"])
    assert again.status_code == 201, again.text
    assert (again.json()["reward"], again.json()["user_type"]) == ("b", "first_time")
    # The limit still holds once the customer got a reward.
    third = await claim(client, world.cust.headers, campaign["id"])
    assert third.status_code == 409, third.text
    assert third.json()["type"].endswith("/reward-limit-reached")


async def test_an_activity_of_a_customer_id_the_stock_store_cannot_name_is_rewarded(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    """A sender's customer id is any printable ASCII (``SenderId``); the stock engine names a
    user with fewer characters. A signup of ``shop/42#a`` was refused whole with a 422 on a
    field ``user`` the body does not have (queued with ``Prefer: respond-async``, its event
    failed for ever)."""
    chain = [option("once", stock=5, per_user_limit=1), option("then", stock=5)]
    campaign = await reward_campaign(
        client, db, world, chain, triggers=["signup"], per_user_limit=2
    )
    for n, customer in enumerate(["shop/42#a", "shop/42#a", "shop:42"]):
        r = await client.post(
            "/api/v1/activities",
            json={
                "id": f"signup-{n}",
                "type": "signup",
                "occurred_at": datetime.now(UTC).isoformat(),
                "customer": customer,
            },
            headers=sender.headers,
        )
        assert r.status_code == 201, r.text
        (outcome,) = r.json()["outcomes"]
        assert outcome["status"] == "rewarded", outcome
    # The reward's own limit held for that customer, apart from a look-alike id.
    rewards = sorted((g.customer_id, g.reward_code) for g in await grants_of(db, campaign["id"]))
    assert rewards == [("shop/42#a", "once"), ("shop/42#a", "then"), ("shop:42", "once")]
    assert await left(client, world.op.headers, campaign["id"]) == {"once": 3, "then": 4}


async def test_two_operators_retiring_the_last_two_rewards_at_once_leave_one_live(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    """The last live reward cannot be retired: two concurrent retires of the last two each
    counted two live rewards and both went through (on PostgreSQL), leaving a chain that
    gives nothing."""
    for _ in range(3):
        chain = [option("a", stock=5), option("b", stock=5)]
        campaign = await reward_campaign(client, db, world, chain, budget=0)
        url = f"/api/v1/campaigns/{campaign['id']}/rewards"
        answers = await asyncio.gather(
            client.delete(f"{url}/a", headers=world.op.headers),
            client.delete(f"{url}/b", headers=world.op.headers),
        )
        assert sorted(a.status_code for a in answers) == [200, 422], [a.text for a in answers]
        r = await client.get(url, headers=world.op.headers)
        assert [x["code"] for x in r.json()["rewards"] if x["retired_at"] is None] != []


async def test_a_reward_added_again_after_an_add_that_rolled_back_has_the_stock_it_says(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    """An add whose transaction rolled back after its stock was split (a 503 while the
    answer was read, a lost connection at commit) left its pool in the stock store; adding
    the reward again with another stock kept the old pool (1,000 units for a reward of 10:
    oversold by 990)."""
    campaign = await reward_campaign(client, db, world, [option("a", stock=5)])
    with contextlib.suppress(Boom):
        async with db.unit_of_work() as s:
            facts = await campaign_service.campaign_facts(s, campaign["id"])
            await rewards_service.add(
                s,
                app.state.stock,
                facts,
                RewardOption.model_validate(option("late", stock=1000)),
                SimpleNamespace(id=world.op.user.id, role="operator"),
            )
            raise Boom  # the add's transaction rolls back after the split
    r = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/rewards",
        json=option("late", stock=10),
        headers={**world.op.headers, "Idempotency-Key": "add-late"},
    )
    assert r.status_code == 201, r.text
    assert await left(client, world.op.headers, campaign["id"]) == {"a": 5, "late": 10}


async def test_a_restock_that_rolls_back_takes_its_units_back_out_of_the_store(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    """The restocked units reach the store before the commit (grants use them at once); a
    restock that rolls back must not leave them there, or the reward gives more than its
    total."""
    campaign = await reward_campaign(client, db, world, [option("a", stock=5)])
    with contextlib.suppress(Boom):
        async with db.unit_of_work() as s:
            await rewards_service.restock(
                s,
                app.state.stock,
                campaign["id"],
                "a",
                7,
                SimpleNamespace(id=world.op.user.id, role="operator"),
            )
            raise Boom
    await settled()
    for _ in range(100):  # the take-back runs in a task after the rollback
        if (await left(client, world.op.headers, campaign["id"]))["a"] == 5:
            break
        await asyncio.sleep(0.01)
    assert await left(client, world.op.headers, campaign["id"]) == {"a": 5}
    r = await client.get(f"/api/v1/campaigns/{campaign['id']}/rewards", headers=world.op.headers)
    assert r.json()["rewards"][0]["stock_total"] == 5
