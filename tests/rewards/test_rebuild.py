"""The stock store loses every reward pool mid-campaign — on Redis a private ``redis-server``
restarted empty, on the embedded engine the pools dropped — while claims keep coming: they
answer 503 (never 500), the stock watch rebuilds each pool from the database, claims go on,
and in the end no reward is given beyond its stock or past a customer's limit, every
acknowledged grant is on record once, and stock left + grants held is each reward's total."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as sync_redis
from sqlalchemy import text

from incentive.config import service as config_service
from incentive.db import Database
from incentive.rewards import stock
from incentive.rewards.grants import pool_of
from incentive.settings import Settings
from incentive.stock.holds import settled
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.factories import Actor
from tests.rewards.conftest import claim, grants_of, left, option, reward_campaign
from tests.servers import free_port
from tests.stock.conftest import RedisServer

STOCK = {"A": 30, "B": 40, "C": 50}
PER_REWARD = {"A": 1, "B": 2, "C": None}
PER_CUSTOMER = 4
_keys = itertools.count()


@pytest.fixture
def store(stock_url: str | None, tmp_path: Any) -> Iterator[RedisServer | None]:
    """On the Redis deployment, a stock store of this test's own that it can kill."""
    if stock_url is None:
        yield None
        return
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, store: RedisServer | None) -> Settings:
    return settings.model_copy(
        update={"embedded_worker": False, "stock_url": store.url if store else None}
    )


class Storm:
    """Customers claiming concurrently; a 503 is retried with the same key, as a client
    told to retry does. Every answer is kept."""

    def __init__(self, client: httpx.AsyncClient, campaign_id: str) -> None:
        self.client = client
        self.campaign_id = campaign_id
        self.statuses: Counter[int] = Counter()
        self.acknowledged: dict[str, str] = {}  # key -> grant id of its 201
        self.final: dict[str, int] = {}  # key -> the answer that ended its retries
        self.granted = asyncio.Event()
        self.unavailable = asyncio.Event()
        self.lose_after = 0

    async def claim_until_answered(self, person: Actor) -> None:
        key = f"storm-{next(_keys)}"
        for _ in range(400):
            r = await claim(self.client, person.headers, self.campaign_id, key=key)
            self.statuses[r.status_code] += 1
            if r.status_code == 503:
                self.unavailable.set()
                assert r.headers.get("Retry-After"), r.text
                await asyncio.sleep(0.2)
                continue
            assert r.status_code in (201, 409), r.text
            self.final[key] = r.status_code
            if r.status_code == 201:
                self.acknowledged[key] = r.json()["id"]
                if len(self.acknowledged) >= self.lose_after:
                    self.granted.set()
            return
        raise AssertionError(f"claim {key} never answered but 503")

    async def customer(self, person: Actor, claims: int) -> None:
        for _ in range(claims):
            await self.claim_until_answered(person)


async def lose_the_store(app: Any, store: RedisServer | None, campaign_id: str) -> None:
    if store is None:  # the embedded store loses its pools
        for code in STOCK:
            await app.state.stock.drop(pool_of(campaign_id, code))
        return
    try:
        sync_redis.Redis(port=store.port).shutdown(nosave=True)
    except sync_redis.ConnectionError:
        pass  # the server closed the connection as it went
    store.wait_stopped()
    await asyncio.sleep(0.3)  # claims meet a store that refuses connections
    store.start()  # empty: no persistence


async def test_the_stock_store_lost_mid_storm_is_rebuilt_and_nothing_is_given_beyond_stock(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    app: Any,
    store: RedisServer | None,
) -> None:
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "rewards.drain_seconds", 2.0, actor="test")
    await app.state.config.reload()
    chain = [
        option(code, stock=n, per_user_limit=PER_REWARD[code], amount=i + 1)
        for i, (code, n) in enumerate(STOCK.items())
    ]
    cid = (await reward_campaign(client, db, world, chain, per_user_limit=PER_CUSTOMER, buckets=4))[
        "id"
    ]
    people = await customers(db, app, 40)
    storm = Storm(client, cid)
    storm.lose_after = 20
    claims = asyncio.gather(*(storm.customer(p, PER_CUSTOMER) for p in people))
    try:
        await asyncio.wait_for(storm.granted.wait(), 30)
        await lose_the_store(app, store, cid)
        await asyncio.wait_for(storm.unavailable.wait(), 30)  # the claims see the loss
        await stock.watch(db, app.state.stock)  # the worker's job: waits the drain, rebuilds
        await asyncio.wait_for(claims, 60)
    finally:
        claims.cancel()
        await asyncio.gather(claims, return_exceptions=True)
    await settled()
    assert set(storm.statuses) <= {201, 409, 503}, storm.statuses
    assert storm.statuses[503] > 0

    # Nothing twice: each acknowledged key is one grant on record, and nothing else is.
    grants = await grants_of(db, cid)
    by_key = {g.trigger_key: g.id for g in grants}
    assert len(by_key) == len(grants)
    assert by_key == {f"claim:{k}": v for k, v in storm.acknowledged.items()}
    # Nothing beyond stock, and the store agrees with the database exactly.
    given = Counter(g.reward_code for g in grants)
    for code, total in STOCK.items():
        assert given[code] <= total, (code, given)
    assert await left(client, world.op.headers, cid) == {
        code: total - given[code] for code, total in STOCK.items()
    }
    # No customer past the campaign's limit nor a reward's.
    for person in people:
        theirs = Counter(g.reward_code for g in grants if g.customer_id == person.user.id)
        assert sum(theirs.values()) <= PER_CUSTOMER
        for code, limit in PER_REWARD.items():
            if limit is not None:
                assert theirs[code] <= limit, (person.user.username, theirs)

    # Whatever is left serves new customers until every unit is given, and no further.
    newcomers = await customers(db, app, sum(STOCK.values()) - len(grants) + 2, prefix="n")
    answers = [(await claim(client, p.headers, cid)).status_code for p in newcomers]
    assert answers == [201] * (len(newcomers) - 2) + [409, 409]
    assert Counter(g.reward_code for g in await grants_of(db, cid)) == STOCK
    assert await left(client, world.op.headers, cid) == dict.fromkeys(STOCK, 0)


class RacedEngine:
    """The app's engine, with a customer's grant step run the moment a rebuild makes units
    available (before ``rebuild`` returns to its caller)."""

    def __init__(self, inner: Any, pool: str, customer: str, limit: int) -> None:
        self.inner, self.pool, self.customer, self.limit = inner, pool, customer, limit
        self.raced: list[object] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def rebuild(self, pool: str, levels: list[int]) -> None:
        await self.inner.rebuild(pool, levels)
        if pool == self.pool and sum(levels):
            took = await self.inner.take_within_quota(pool, self.customer, 1, self.limit)
            self.raced.append(took)


async def test_a_grant_racing_the_rebuild_meets_the_customers_use_already_restored(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    chain = [option("B", stock=10, per_user_limit=2), option("C", stock=10)]
    cid = (await reward_campaign(client, db, world, chain, per_user_limit=5))["id"]
    for _ in range(2):
        assert (await claim(client, world.cust.headers, cid)).json()["reward"] == "B"
    pool = pool_of(cid, "B")
    await app.state.stock.drop(pool)  # the store lost it
    raced = RacedEngine(app.state.stock, pool, world.cust.user.id, 2)
    rebuilt = await stock.rebuild(db, raced, cid, "B")  # type: ignore[arg-type]
    assert rebuilt is not None
    assert (rebuilt.total, rebuilt.held) == (10, 2)
    assert raced.raced == [None]  # the customer's limit held: nothing taken
    assert await app.state.stock.quota_used(pool, world.cust.user.id) == 2
    assert sum(await app.state.stock.remaining(pool)) == 8
    third = await claim(client, world.cust.headers, cid)
    assert [(s["code"], s["reason"]) for s in third.json()["chain"]] == [
        ("B", "limit-reached"),
        ("C", None),
    ]


@pytest.mark.postgres_only
async def test_a_grant_committing_after_the_drain_is_not_given_twice(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    """A grant that took its unit from the pool the store then lost, and commits only after
    the drain (here: queued behind the budget's row lock), is counted by the rebuild: its
    unit is not given again (before the fence: 8 of 5 given)."""
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "rewards.drain_seconds", 0.2, actor="test")
    await app.state.config.reload()
    campaign = await reward_campaign(client, db, world, [option("A", stock=5)])
    cid, engine = campaign["id"], app.state.stock
    pool = pool_of(cid, "A")
    people = await customers(db, app, 8)
    async with db.engine.connect() as blocker:
        await blocker.begin()
        await blocker.execute(
            text("SELECT id FROM accounts WHERE id = :id FOR UPDATE"),
            {"id": campaign["budget_account_id"]},
        )
        slow = [asyncio.create_task(claim(client, p.headers, cid)) for p in people[:3]]
        for _ in range(500):  # until the three took their units, then wait for the budget
            if sum(await engine.remaining(pool)) == 2:
                break
            await asyncio.sleep(0.01)
        await engine.drop(pool)  # the store loses the pool
        watch = asyncio.create_task(stock.watch(db, engine))
        await asyncio.sleep(1.0)  # well past the drain
        await blocker.rollback()
    await watch
    assert [r.status_code for r in await asyncio.gather(*slow)] == [201] * 3
    rest = [(await claim(client, p.headers, cid)).status_code for p in people[3:]]
    assert rest == [201, 201, 409, 409, 409]
    assert Counter(g.reward_code for g in await grants_of(db, cid)) == {"A": 5}
    assert await left(client, world.op.headers, cid) == {"A": 0}
