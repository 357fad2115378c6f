"""Outbox + in-process bus: committed events delivered at least once, handled once."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from incentive import events
from incentive.db import Database, utcnow
from incentive.events.backends.inprocess import InProcessTransport
from incentive.events.models import OutboxEvent, ProcessedEvent
from incentive.events.relay import Relay
from incentive.events.service import handle
from tests.events.conftest import Recorder, add, effects, outbox_count
from tests.events.relay_process import IN_HANDLER, LEASE_SECONDS


def _relay(db: Database, **kw: Any) -> Relay:
    kw.setdefault("retry_base_seconds", 0.01)
    return Relay(db, InProcessTransport(db), **kw)


async def _publish(db: Database, n: int = 1, topic: str = "test.happened") -> list[str]:
    async with db.unit_of_work() as s:
        return [await events.publish(s, topic, {"n": i}, key=f"k{i}") for i in range(n)]


async def _processed(db: Database) -> int:
    async with db.unit_of_work() as s:
        q = select(func.count()).select_from(ProcessedEvent)
        return int((await s.execute(q)).scalar_one())


async def test_rolled_back_event_is_never_delivered(
    db: Database, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("rollback-check"))

    async def change_that_fails() -> None:
        async with db.unit_of_work() as s:
            await events.publish(s, "test.happened", {"x": 1})
            raise RuntimeError("change failed")

    with pytest.raises(RuntimeError, match="change failed"):
        await change_that_fails()
    assert await _relay(db).drain() == 0
    assert rec.calls == []
    assert await outbox_count(db) == 0


async def test_committed_event_is_delivered_with_its_content(
    db: Database, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("content"))
    [event_id] = await _publish(db)
    assert rec.calls == []  # nothing leaves before the relay runs
    assert await _relay(db).drain() >= 1
    [event] = rec.calls
    assert (event.id, event.topic, event.key, event.payload) == (
        event_id,
        "test.happened",
        "k0",
        {"n": 0},
    )
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert await effects(db) == 1
    async with db.unit_of_work() as s:
        row = (
            await s.execute(select(OutboxEvent).where(OutboxEvent.event_id == event_id))
        ).scalar_one()
        assert row.published_at is not None
        assert row.attempts == 1


async def test_failing_handler_is_retried_and_its_effect_lands_once(
    db: Database, subscribers: list[Recorder]
) -> None:
    flaky = add(subscribers, Recorder("flaky", fail_times=2))
    steady = add(subscribers, Recorder("steady"))
    [event_id] = await _publish(db)
    relay = _relay(db)
    deadline = time.monotonic() + 5
    while await effects(db, "flaky") == 0:
        assert time.monotonic() < deadline
        await relay.run_once()
        await asyncio.sleep(0.02)
    assert len(flaky.calls) == 3
    # The subscriber that succeeded on the first try was not run again.
    assert len(steady.calls) == 1
    assert await effects(db, "flaky") == 1
    assert await effects(db, "steady") == 1
    async with db.unit_of_work() as s:
        row = (
            await s.execute(select(OutboxEvent).where(OutboxEvent.event_id == event_id))
        ).scalar_one()
        assert row.published_at is not None
        assert row.attempts == 3
        assert row.last_error is None


async def test_failed_delivery_is_rescheduled_with_backoff(
    db: Database, subscribers: list[Recorder]
) -> None:
    add(subscribers, Recorder("always-fails", fail_times=10**6))
    [event_id] = await _publish(db)
    relay = _relay(db, retry_base_seconds=60)
    assert await relay.run_once() == 0
    async with db.unit_of_work() as s:
        row = (
            await s.execute(select(OutboxEvent).where(OutboxEvent.event_id == event_id))
        ).scalar_one()
    assert row.published_at is None
    assert "failing on purpose" in (row.last_error or "")
    assert row.available_at > utcnow() + timedelta(seconds=50)
    assert await relay.run_once() == 0  # not due yet: not even claimed
    assert await effects(db) == 0  # the failed handler's writes were rolled back
    assert await relay.measure_lag() == (1, pytest.approx(0, abs=5))


async def test_relaying_twice_runs_the_handler_effect_once(
    db: Database, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("dedup"))
    await _publish(db, 3)
    assert await _relay(db).drain() >= 3
    # Simulate a relay that delivered and then died before marking the rows published.
    async with db.unit_of_work() as s:
        await s.execute(update(OutboxEvent).values(published_at=None, available_at=utcnow()))
    await _relay(db).drain()
    assert len(rec.calls) == 3
    assert await effects(db, "dedup") == 3
    assert await _processed(db) == 3


async def test_concurrent_duplicate_deliveries_are_handled_once(
    db: Database, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("concurrent"))
    [event_id] = await _publish(db)
    async with db.unit_of_work() as s:
        row = (
            await s.execute(select(OutboxEvent).where(OutboxEvent.event_id == event_id))
        ).scalar_one()
        event = events.Event(row.event_id, row.topic, row.key, row.payload, row.created_at)
    subscription = events.subscribe(rec.topic, rec.name, rec)
    results = await asyncio.gather(*(handle(db, subscription, event) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert await effects(db, "concurrent") == 1


class _Recording:
    """A transport that only records what it was given (to count relay hand-offs)."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def deliver(self, batch: Sequence[events.Event]) -> dict[str, str | None]:
        await asyncio.sleep(0.01)  # widen the window in which relays overlap
        self.seen.extend(e.id for e in batch)
        return {e.id: None for e in batch}


async def test_concurrent_relays_hand_each_event_over_once(db: Database, database_url: str) -> None:
    ids = await _publish(db, 300)
    transports = [_Recording() for _ in range(4)]
    dbs = [Database(database_url) for _ in transports]
    try:
        relays = [Relay(d, t, batch_size=25) for d, t in zip(dbs, transports, strict=True)]
        await asyncio.gather(*(r.drain() for r in relays))
    finally:
        for d in dbs:
            await d.dispose()
    seen = [i for t in transports for i in t.seen]
    assert sorted(seen) == sorted(ids)
    assert len(set(seen)) == len(seen)


async def _relay_process(*args: str) -> asyncio.subprocess.Process:
    """Start ``tests/events/relay_process.py`` as its own process (stdout, stderr kept)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.events.relay_process",
        *args,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _until_said(line: str, proc: asyncio.subprocess.Process, within: float) -> None:
    """Read the process's output until it says ``line`` (it is then where the test wants it)."""
    assert proc.stdout is not None
    seen: list[bytes] = []
    async with asyncio.timeout(within):
        while (out := await proc.stdout.readline()) and out.strip() != line.encode():
            seen.append(out)
    assert out, f"the process ended without saying {line}: {b''.join(seen).decode()}"


async def test_relay_killed_in_a_handler_leaves_its_claim_to_another_after_the_lease(
    db: Database, database_url: str, subscribers: list[Recorder]
) -> None:
    """A real relay process claims the event, writes its handler's effect and is killed -9
    before committing; after the lease a relay in another process delivers it, once."""
    rec = add(subscribers, Recorder("lease"))
    await _publish(db)
    proc = await _relay_process("stuck", database_url)
    try:
        await _until_said(IN_HANDLER, proc, 60)
    finally:
        proc.kill()
    assert await proc.wait() == -signal.SIGKILL
    claimed_until = time.monotonic() + LEASE_SECONDS
    survivor = _relay(db)
    assert await survivor.run_once() == 0  # still leased to the dead process
    assert await effects(db) == 0  # its uncommitted effect died with it
    await asyncio.sleep(max(0.0, claimed_until - time.monotonic()) + 0.2)
    assert await survivor.run_once() == 1
    assert len(rec.calls) == 1
    assert await effects(db, "lease") == 1
    async with db.unit_of_work() as s:
        row = (
            await s.execute(select(OutboxEvent).where(OutboxEvent.topic == "test.happened"))
        ).scalar_one()
    assert row.published_at is not None
    assert row.attempts == 2  # the dead claim and the survivor's


async def test_app_relays_in_the_background(
    app: Any, db: Database, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("background"))
    await _publish(db)
    deadline = time.monotonic() + 2
    while not rec.calls:
        assert time.monotonic() < deadline, "not delivered within 2 s"
        await asyncio.sleep(0.02)
    assert await effects(db, "background") == 1


async def test_publish_rejects_what_cannot_be_delivered(db: Database) -> None:
    async with db.unit_of_work() as s:
        with pytest.raises(ValueError, match="topic"):
            await events.publish(s, "Bad Topic", {})
        with pytest.raises(TypeError):
            await events.publish(s, "test.happened", {"when": object()})
        with pytest.raises(ValueError, match="key"):
            await events.publish(s, "test.happened", {}, key="")
        with pytest.raises(ValueError, match="JSON"):
            await events.publish(s, "test.happened", {"n": float("nan")})
        # The caller caught the refusals and carries on: its transaction commits.
        good = await events.publish(s, "test.happened", {"n": 1}, key="good")
    async with db.unit_of_work() as s:
        rows = (await s.execute(select(OutboxEvent.event_id, OutboxEvent.key))).all()
    assert [tuple(r) for r in rows] == [(good, "good")]  # nothing of the refused ones


def test_subscribe_validates_and_refuses_a_second_handler_under_one_name() -> None:
    async def h1(session: Any, event: events.Event) -> None:
        return None

    async def h2(session: Any, event: events.Event) -> None:
        return None

    try:
        assert events.subscribe("test.sub", "one", h1) is events.subscribe("test.sub", "one", h1)
        with pytest.raises(ValueError, match="already"):
            events.subscribe("test.sub", "one", h2)
        with pytest.raises(ValueError, match="name"):
            events.subscribe("test.sub", "Bad Name", h2)
    finally:
        events.unsubscribe("test.sub", "one")


async def test_purge_keeps_pending_and_recent_rows(db: Database) -> None:
    await _publish(db, 2)
    async with db.unit_of_work() as s:
        first = (await s.execute(select(OutboxEvent).order_by(OutboxEvent.id))).scalars().first()
        assert first is not None
        first.published_at = utcnow() - timedelta(days=30)
    await _relay(db).purge()
    assert await outbox_count(db) == 1
