"""A deduction tied to a transaction: kept when it commits, given back when it — or the
savepoint it was taken in — rolls back, and never given back by another savepoint's
rollback or release (which would oversell). Levels read from the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import Database
from incentive.stock.backends.embedded import EmbeddedStockEngine
from incentive.stock.engine import Deduction
from incentive.stock.holds import give_back_if_committed, keep_if_committed, settled


class Boom(Exception):
    pass


@pytest.fixture
async def engine() -> EmbeddedStockEngine:
    engine = EmbeddedStockEngine()
    await engine.split("p", 10, 1)
    return engine


async def _left(engine: EmbeddedStockEngine) -> tuple[int, int]:
    await settled()
    return sum(await engine.remaining("p")), await engine.quota_used("p", "u")


async def _take(engine: EmbeddedStockEngine) -> Deduction:
    deduction = await engine.take_within_quota("p", "u", 1, 100)
    assert deduction is not None
    return deduction


@asynccontextmanager
async def _work(db: Database) -> AsyncIterator[AsyncSession]:
    async with db.unit_of_work() as s:
        await s.execute(text("SELECT 1"))  # as every real unit of work does before
        yield s


async def _failing(work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work``, which raises Boom at its end."""
    with pytest.raises(Boom):
        await work()


async def test_kept_when_the_transaction_commits(db: Database, engine: EmbeddedStockEngine) -> None:
    async with _work(db) as s:
        keep_if_committed(s, engine, await _take(engine), "u")
    assert await _left(engine) == (9, 1)


async def test_given_back_when_the_transaction_rolls_back(
    db: Database, engine: EmbeddedStockEngine
) -> None:
    async def work() -> None:
        async with _work(db) as s:
            keep_if_committed(s, engine, await _take(engine), "u")
            raise Boom

    await _failing(work)
    assert await _left(engine) == (10, 0)


async def test_another_savepoints_rollback_or_release_gives_nothing_back(
    db: Database, engine: EmbeddedStockEngine
) -> None:
    async with _work(db) as s:
        keep_if_committed(s, engine, await _take(engine), "u")

        async def other() -> None:
            async with s.begin_nested():
                raise Boom

        await _failing(other)
        async with s.begin_nested():
            pass
    assert await _left(engine) == (9, 1)


async def test_a_rolled_back_savepoint_gives_back_what_it_took_and_only_that(
    db: Database, engine: EmbeddedStockEngine
) -> None:
    async with _work(db) as s:
        keep_if_committed(s, engine, await _take(engine), "u")

        async def inner() -> None:
            async with s.begin_nested():
                keep_if_committed(s, engine, await _take(engine), "u")
                raise Boom

        await _failing(inner)
        async with s.begin_nested(), s.begin_nested():
            keep_if_committed(s, engine, await _take(engine), "u")  # released twice: kept
    assert await _left(engine) == (8, 2)


async def test_a_released_savepoint_hands_its_hold_to_the_outer_rollback(
    db: Database, engine: EmbeddedStockEngine
) -> None:
    async def work() -> None:
        async with _work(db) as s:
            async with s.begin_nested():
                keep_if_committed(s, engine, await _take(engine), "u")
            raise Boom

    await _failing(work)
    assert await _left(engine) == (10, 0)


async def test_give_back_if_committed_waits_for_the_real_commit(
    db: Database, engine: EmbeddedStockEngine
) -> None:
    taken = await _take(engine)

    async def work() -> None:
        async with _work(db) as s:
            async with s.begin_nested():
                give_back_if_committed(s, engine, taken, "u")
            await settled()  # a savepoint's release is no commit
            assert sum(await engine.remaining("p")) == 9
            raise Boom

    await _failing(work)
    assert await _left(engine) == (9, 1)  # rolled back: still taken
    async with _work(db) as s:
        give_back_if_committed(s, engine, taken, "u")
    assert await _left(engine) == (10, 0)
