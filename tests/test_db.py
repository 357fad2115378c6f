"""The unit of work: cancellation-safe cleanup and a drain for process shutdown."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from incentive.auth.models import Merchant
from incentive.db import Database


async def test_cancelled_unit_of_work_releases_its_connection(db: Database) -> None:
    inside = asyncio.Event()

    async def writer() -> None:
        async with db.unit_of_work() as s:
            s.add(Merchant(code="LOCK", name="holds the write lock"))
            await s.flush()
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(writer())
    await inside.wait()
    # Cancelled, then cancelled again while it rolls back (nested task groups at shutdown).
    for _ in range(20):
        task.cancel()
        await asyncio.sleep(0)
    await asyncio.gather(task, return_exceptions=True)
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with asyncio.timeout(5), db.unit_of_work() as s:
        s.add(Merchant(code="NEXT", name="after"))
        await s.flush()
        assert await s.get(Merchant, "LOCK") is None


async def test_drain_lets_running_work_commit_and_refuses_new_work(db: Database) -> None:
    inside = asyncio.Event()

    async def writer() -> None:
        async with db.unit_of_work() as s:
            s.add(Merchant(code="SLOW", name="commits during the drain"))
            await s.flush()
            inside.set()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(writer())
    await inside.wait()
    async with db.draining(grace_seconds=5):
        assert task.done()
        assert task.exception() is None
        with pytest.raises(asyncio.CancelledError):
            async with db.unit_of_work():
                pass
    async with db.unit_of_work() as s:
        codes = {m.code for m in (await s.execute(Merchant.__table__.select())).all()}
    assert codes == {"SLOW"}


async def test_a_reader_is_not_queued_behind_an_open_write(db: Database) -> None:
    """A hot-path read (``Database.reader``: the caller look-up, a flash sale's facts) answers
    with the committed state while another unit of work holds the write lock. On SQLite a
    reader that began ``IMMEDIATE`` waited for the lock and, under a sold-out stampede,
    failed with "database is locked"."""
    async with db.unit_of_work() as s:
        s.add(Merchant(code="SEEN", name="committed before"))
    async with db.unit_of_work() as s:
        s.add(Merchant(code="OPEN", name="not committed yet"))
        await s.flush()  # the write lock is held from here until the commit
        async with asyncio.timeout(5), db.reader() as conn:
            codes = (await conn.execute(select(Merchant.code))).scalars().all()
    assert sorted(codes) == ["SEEN"]
