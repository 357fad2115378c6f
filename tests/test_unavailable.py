"""A database that cannot take a request now is a 503 with ``Retry-After``, never a 500, on
every path to it (issue 11): the request's unit of work, ``Database.reader()`` (the caller of
a purchase) and the purchase group commit; and nothing is written.

Real PostgreSQL: the app's pool comes from the settings (``INCENTIVE_DB_POOL_*``) and is
exhausted by connections held here or by concurrent requests; the server refuses new
connections through a role whose ``CONNECTION LIMIT`` is reached (the shared server's
``max_connections`` is never touched); the server goes away behind a TCP gate.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from incentive.app import create_app
from incentive.campaigns.models import Campaign
from incentive.db import Database, new_id
from incentive.settings import Settings
from tests.factories import Actor, make_user
from tests.flash_sales.conftest import Sales, make_customers
from tests.flash_sales.test_purchases import _committed
from tests.tcp_gate import TcpGate

pytestmark = pytest.mark.postgres_only

POOL = 2


@pytest.fixture
def settings(data_dir: Any, database_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=None,
        demo_data=False,
        log_level="ERROR",
        db_pool_size=POOL,
        db_max_overflow=0,
        db_pool_timeout=0.5,
    )


@pytest.fixture
async def app(settings: Settings, db: Database) -> AsyncIterator[Any]:
    # No db passed: the app builds its own Database from the settings, as `serve` does.
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def sales(client: httpx.AsyncClient, db: Database, app: Any) -> Sales:
    operator = await make_user(db, app, username="op", role="operator")
    return Sales(client, operator, db, app)


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["type"].endswith("/unavailable"), r.text


async def _campaigns(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int(await s.scalar(select(func.count()).select_from(Campaign)) or 0)


def _new_sale(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "sku": "SKU-2",
        "item_name": "Phone",
        "price_fen": 100,
        "total_stock": 5,
        "per_user_limit": 1,
        "buckets": 1,
        "starts_at": "2030-01-01T00:00:00Z",
        "ends_at": "2030-01-02T00:00:00Z",
    }


async def test_an_exhausted_pool_is_a_503_with_retry_after_on_every_path_and_writes_nothing(
    sales: Sales, db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    sale = await sales.create(10, limit=1, buckets=2)
    [buyer] = await make_customers(db, app, 1)
    campaigns = await _campaigns(db)
    held: list[AsyncConnection] = []
    for _ in range(POOL):  # every connection the settings allow this process
        held.append(await app.state.db.engine.connect())
    try:
        # The purchase: its caller is read through Database.reader().
        assert_unavailable(await sales.buy(buyer, sale, 1, key="k-1"))
        # A route on the request's unit of work (the Session dependency), reading and writing.
        assert_unavailable(
            await client.get(f"/api/v1/flash-sales/{sale}", headers=sales.operator.headers)
        )
        assert_unavailable(
            await client.post(
                "/api/v1/flash-sales", json=_new_sale("Late"), headers=sales.operator.headers
            )
        )
    finally:
        for conn in held:
            await conn.close()
    assert await _committed(db, sale) == (0, 0)
    assert await _campaigns(db) == campaigns
    assert (await sales.state(sale))["remaining"] == 10
    # The same key buys once connections are free again: the 503 kept nothing of it.
    assert (await sales.buy(buyer, sale, 1, key="k-1")).status_code == 201
    assert await _committed(db, sale) == (1, 1)


async def test_concurrent_purchases_beyond_the_pool_get_201_or_503_and_stock_adds_up(
    sales: Sales, db: Database, app: Any
) -> None:
    """More concurrent buyers than connections: while every connection is held elsewhere the
    first answers are 503s (whichever path ran out: the caller, the sale facts or the group
    commit), then the buyers share the freed pool. Every answer is a 201 or a 503, never a
    500, and the stock sold is exactly what the 201s bought."""
    sale = await sales.create(100, limit=1, buckets=4)
    buyers = await make_customers(db, app, 40)
    held = [await app.state.db.engine.connect() for _ in range(POOL)]
    pending = {asyncio.create_task(sales.buy(b, sale, 1)) for b in buyers}
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    for conn in held:  # a first answer came while nothing was free: now free them
        await conn.close()
    first = [t.result() for t in done]
    responses = [t.result() for t in done] + list(await asyncio.gather(*(pending - done)))
    for r in first:
        assert_unavailable(r)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 503}, [r.text[:120] for r in responses if r.status_code >= 500]
    for r in responses:
        if r.status_code == 503:
            assert_unavailable(r)
    sold = statuses.count(201)
    assert await _committed(db, sale) == (sold, sold)
    assert (await sales.state(sale))["remaining"] == 100 - sold


# ---------------------------------------------------------------- the server refuses clients

ROLE = f"incentive_limited_{os.getpid()}"


@pytest.fixture
async def limited_role(database_url: str) -> AsyncIterator[str]:
    """A login role with rights on the test database's tables, for an app to connect as;
    its ``CONNECTION LIMIT`` is what the test lowers."""
    admin = Database(database_url)
    async with admin.engine.begin() as conn:
        await conn.execute(text(f'DROP ROLE IF EXISTS "{ROLE}"'))
        await conn.execute(text(f'CREATE ROLE "{ROLE}" LOGIN'))
        await conn.execute(text(f'GRANT ALL ON SCHEMA public TO "{ROLE}"'))
        await conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{ROLE}"'))
        await conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{ROLE}"'))
    try:
        yield (
            make_url(database_url)
            .set(username=ROLE, password=None)
            .render_as_string(hide_password=False)
        )
    finally:
        async with admin.engine.begin() as conn:
            await conn.execute(text(f'DROP OWNED BY "{ROLE}"'))
            await conn.execute(text(f'DROP ROLE "{ROLE}"'))
        await admin.dispose()


async def _set_limit(db: Database, limit: int) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text(f'ALTER ROLE "{ROLE}" CONNECTION LIMIT {limit}'))


async def test_a_server_refusing_new_clients_is_a_503_and_writes_nothing(
    data_dir: Any, db: Database, limited_role: str
) -> None:
    settings = Settings(
        data_dir=data_dir,
        database_url=limited_role,
        demo_data=False,
        log_level="ERROR",
        embedded_worker=False,
        db_pool_size=POOL,
        db_max_overflow=0,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        operator = await make_user(db, application, username="op", role="operator")
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            campaigns = await _campaigns(db)
            # "too many connections for role": SQLSTATE 53300, as "too many clients already"
            await _set_limit(db, 0)
            await application.state.db.engine.dispose()  # no connection kept from before
            try:
                r = await client.post(
                    "/api/v1/flash-sales", json=_new_sale("Refused"), headers=operator.headers
                )
                assert_unavailable(r)
                assert_unavailable(
                    await client.get("/api/v1/campaigns?limit=5", headers=operator.headers)
                )
            finally:
                await _set_limit(db, -1)
            assert await _campaigns(db) == campaigns
            r = await client.post(
                "/api/v1/flash-sales", json=_new_sale("Served"), headers=operator.headers
            )
            assert r.status_code == 201, r.text


async def test_an_unreachable_database_is_a_503_for_purchases_and_other_routes(
    database_url: str, data_dir: Any, db: Database
) -> None:
    url = make_url(database_url)
    gate = TcpGate(url.host or "127.0.0.1", url.port or 5432)
    await gate.open()
    settings = Settings(
        data_dir=data_dir,
        database_url=url.set(host="127.0.0.1", port=gate.port).render_as_string(
            hide_password=False
        ),
        demo_data=False,
        log_level="ERROR",
        db_pool_size=POOL,
        db_max_overflow=0,
    )
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                sales = Sales(
                    client,
                    await make_user(db, application, username="op", role="operator"),
                    db,
                    application,
                )
                sale = await sales.create(5, limit=1, buckets=1)
                buyer: Actor = (await make_customers(db, application, 1))[0]
                await gate.cut()  # pooled connections dropped, new ones refused
                try:
                    for _ in range(2):  # a lost pooled connection, then a refused one
                        assert_unavailable(await sales.buy(buyer, sale, 1, key=new_id()))
                        assert_unavailable(
                            await client.get(
                                f"/api/v1/flash-sales/{sale}", headers=sales.operator.headers
                            )
                        )
                finally:
                    await gate.open()
                assert await _committed(db, sale) == (0, 0)
                assert (await sales.buy(buyer, sale, 1)).status_code == 201
    finally:
        await gate.cut()
