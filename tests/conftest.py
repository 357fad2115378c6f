"""Fixtures for both deployments.

- SQLite (default): a fresh file database per test session.
- PostgreSQL: set ``INCENTIVE_TEST_DATABASE_URL=postgresql+asyncpg://user@host/db``; a fresh
  database ``<db>_t<pid>`` is created for the session, migrated, and dropped at the end.
- Redis: set ``INCENTIVE_TEST_REDIS_URL``; tests marked ``redis`` skip without it.
  When a URL is set but the service cannot be reached, the session fails (never skips).
Every test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from incentive import domains, migrations
from incentive.app import create_app
from incentive.db import Base, Database
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.settings import Settings

domains.load()  # every table, live-config key and campaign kind, before collection

PG_URL = os.environ.get("INCENTIVE_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("INCENTIVE_TEST_REDIS_URL")


def pytest_report_header() -> list[str]:
    return [
        f"incentive database: {'postgresql' if PG_URL else 'sqlite'}; "
        f"redis: {'yes' if REDIS_URL else 'no'}"
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "postgres_only" in item.keywords and not PG_URL:
            item.add_marker(pytest.mark.skip(reason="PostgreSQL run only"))
        if "redis" in item.keywords and not REDIS_URL:
            item.add_marker(pytest.mark.skip(reason="set INCENTIVE_TEST_REDIS_URL"))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PG_URL:
        name = f"{make_url(PG_URL).database or 'incentive'}_t{os.getpid()}"
        try:
            url = asyncio.run(recreate_database(PG_URL, name))
        except OSError as exc:  # unreachable PostgreSQL must fail the run, not skip it
            pytest.exit(f"PostgreSQL unreachable at {PG_URL}: {exc}", returncode=3)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"

    async def _migrate() -> None:
        db = Database(url)
        await migrations.upgrade(db.engine)
        await db.dispose()

    asyncio.run(_migrate())
    yield url
    if PG_URL:
        asyncio.run(drop_database(PG_URL, name))


async def _empty_tables(db: Database) -> None:
    names = [t.name for t in reversed(Base.metadata.sorted_tables)]
    async with db.engine.begin() as conn:
        if db.is_sqlite:
            for name in names:
                await conn.execute(text(f'DELETE FROM "{name}"'))
        else:
            joined = ", ".join(f'"{n}"' for n in names)
            await conn.execute(text(f"TRUNCATE {joined} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    # The in-process app of most tests takes the load of a whole deployment (thousands of
    # concurrent purchases on one event loop) on a shared machine: its pool stays what it
    # was before pools were sized by settings, so those tests keep measuring what they
    # assert. The default pool's own behaviour is tests/test_unavailable.py's.
    database = Database(database_url, pool_size=30, max_overflow=10, pool_timeout=30)
    await _empty_tables(database)
    yield database
    await database.dispose()


@pytest.fixture
def redis_url() -> str | None:
    return REDIS_URL


@pytest.fixture
async def redis(redis_url: str | None) -> AsyncIterator[Any]:
    """A real Redis client on a flushed database (tests marked ``redis`` only)."""
    if not redis_url:
        pytest.skip("set INCENTIVE_TEST_REDIS_URL")
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        await client.ping()
    except OSError as exc:
        pytest.fail(f"Redis unreachable at {redis_url}: {exc}")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def settings(data_dir: Path, redis_url: str | None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        demo_data=False,
        log_json=True,
        log_level="WARNING",
    )


@pytest.fixture
async def app(settings: Settings, db: Database) -> AsyncIterator[Any]:
    application = create_app(settings, db)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
