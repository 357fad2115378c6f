"""Migrations build the schema from nothing on the deployment's engine and match the models."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url

import incentive.models  # noqa: F401
from incentive import migrations
from incentive.db import Base, Database
from incentive.kit.pgadmin import drop_database, recreate_database
from tests.conftest import PG_URL


@pytest.fixture
def empty_database_url(tmp_path: Path) -> Iterator[str]:
    if not PG_URL:
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"{make_url(PG_URL).database or 'incentive'}_m{os.getpid()}"
    yield asyncio.run(recreate_database(PG_URL, name))
    asyncio.run(drop_database(PG_URL, name))


def _diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


async def test_upgrade_downgrade_upgrade_on_empty_database(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        await migrations.upgrade(db.engine)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
            assert await conn.run_sync(_diff) == [], "models and migrations disagree"
        await migrations.downgrade(db.engine, "base")
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        await migrations.upgrade(db.engine)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
    finally:
        await db.dispose()
