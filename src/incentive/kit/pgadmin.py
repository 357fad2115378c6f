"""Create and drop PostgreSQL databases (tests, benchmarks, first-time setup)."""

from __future__ import annotations

from sqlalchemy.engine import make_url


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(
        user=u.username,
        password=u.password,
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        database="postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def recreate_database(url: str, name: str) -> str:
    """Drop ``name`` if it exists, create it empty; returns ``url`` pointing at it."""
    await drop_database(url, name)
    await _admin(url, f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str, name: str) -> None:
    await _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
