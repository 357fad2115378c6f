"""Fixtures for the auth tests: the deployment's settings (Redis login throttle on the
PostgreSQL + Redis run), row counts, and an app with role-guarded throwaway routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from incentive.app import create_app
from incentive.auth.throttle import LoginThrottle
from incentive.db import Base, Database
from incentive.settings import Settings
from tests.auth.clients import client_from, guarded_router

Ceilings = dict[str, Any]


async def deployment_settings(data_dir: Path, redis_url: str | None, **ceilings: Any) -> Settings:
    """Settings of the deployment under test; with Redis, its database is flushed first so
    no login counter of an earlier test is left."""
    if redis_url:
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()
    return Settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=redis_url,
        demo_data=False,
        log_json=True,
        log_level="WARNING",
        **ceilings,
    )


@pytest.fixture
async def settings(data_dir: Path) -> Settings:
    """The embedded deployment; the throttle tests (test_throttle.py) bring their own, on
    Redis in the PostgreSQL + Redis run. Apps on Redis here stalled once in a teardown on
    PostgreSQL + Redis (not yet explained; see the issue 10 note)."""
    return await deployment_settings(data_dir, None)


@pytest.fixture
async def throttle(settings: Settings) -> AsyncIterator[LoginThrottle]:
    """The login throttle of the deployment under test, for calling ``sessions.login``."""
    if settings.redis_url is None:
        yield LoginThrottle.for_settings(settings, None)
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(settings.redis_url)
    try:
        yield LoginThrottle.for_settings(settings, client.connection_pool)
    finally:
        await client.aclose()


RowCounter = Callable[[type[Any]], Awaitable[int]]
TableCounts = Callable[[], Awaitable[dict[str, int]]]


@pytest.fixture
def count_rows(db: Database) -> RowCounter:
    async def count(model: type[Any]) -> int:
        async with db.unit_of_work() as s:
            return int((await s.execute(select(func.count()).select_from(model))).scalar_one())

    return count


@pytest.fixture
def table_counts(db: Database) -> TableCounts:
    """Row count of every table: a snapshot to prove a refused request wrote nothing."""

    async def snapshot() -> dict[str, int]:
        counts = {}
        async with db.unit_of_work() as s:
            for table in Base.metadata.sorted_tables:
                counts[table.name] = int(
                    (await s.execute(select(func.count()).select_from(table))).scalar_one()
                )
        return counts

    return snapshot


@pytest.fixture
async def guarded_app(settings: Settings, db: Database) -> AsyncIterator[FastAPI]:
    """A fresh app with one throwaway route per role guard under /test."""
    application = create_app(settings, db)
    application.include_router(guarded_router(), prefix="/test")
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def guarded_client(guarded_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_from(guarded_app, "127.0.0.1") as c:
        yield c
