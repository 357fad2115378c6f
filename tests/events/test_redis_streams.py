"""Redis Streams transport: consumer groups, ack after commit, reclaim of stale messages."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from incentive import events
from incentive.app import create_app
from incentive.db import Database
from incentive.events.backends.redis_streams import (
    RedisStreamsTransport,
    StreamConsumer,
    decode,
    stream_name,
)
from incentive.events.models import OutboxEvent
from incentive.events.relay import Relay
from incentive.settings import Settings
from tests.events.conftest import Recorder, add, effects
from tests.events.relay_process import LEASE_SECONDS
from tests.tcp_gate import TcpGate

pytestmark = pytest.mark.redis

STREAM = stream_name("test.happened")


async def _publish(db: Database, n: int) -> list[str]:
    async with db.unit_of_work() as s:
        return [await events.publish(s, "test.happened", {"n": i}) for i in range(n)]


def _consumer(
    db: Database, redis: Any, rec: Recorder, name: str = "c1", **kw: Any
) -> StreamConsumer:
    subscription = events.subscribe(rec.topic, rec.name, rec)
    return StreamConsumer(db, redis, subscription, consumer=name, block_ms=50, **kw)


async def _pending(redis: Any, group: str) -> int:
    return int((await redis.xpending(STREAM, group))["pending"])


async def test_relay_to_stream_to_handler_then_ack(
    db: Database, redis: Any, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("streams-basic"))
    consumer = _consumer(db, redis, rec)
    await consumer.ensure_group()
    ids = await _publish(db, 3)
    assert await Relay(db, RedisStreamsTransport(redis)).drain() == 3
    assert await redis.xlen(STREAM) == 3
    assert rec.calls == []  # the relay only hands over; the consumer delivers
    assert await consumer.read_new() == 3
    assert [e.id for e in rec.calls] == ids
    assert await _pending(redis, rec.name) == 0
    assert await effects(db, rec.name) == 3


@pytest.mark.postgres_only  # the gate reads PostgreSQL's wire protocol
async def test_relay_killed_between_xadd_and_marking_published_has_one_effect(
    db: Database, database_url: str, redis: Any, redis_url: str, subscribers: list[Recorder]
) -> None:
    """A real relay process puts the events in the stream, then is killed -9 while its
    "published" mark is held back on the way to PostgreSQL; after the lease the events go out
    again, and the duplicate stream entries have one effect each."""
    rec = add(subscribers, Recorder("streams-dup"))
    consumer = _consumer(db, redis, rec)
    await consumer.ensure_group()
    await _publish(db, 2)
    url = make_url(database_url)
    gate = TcpGate(url.host or "127.0.0.1", url.port or 5432, hold=b"last_error")
    await gate.open()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.events.relay_process",
        "streams",
        url.set(host="127.0.0.1", port=gate.port).render_as_string(hide_password=False),
        redis_url,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.wait_for(gate.held.wait(), 60)  # its mark is on the way: kill it there
        assert await redis.xlen(STREAM) == 2
    finally:
        proc.kill()
        await proc.wait()
        await gate.cut()
    async with db.unit_of_work() as s:
        published = (await s.execute(select(OutboxEvent.published_at))).scalars().all()
    assert published == [None, None]
    claimed_until = time.monotonic() + LEASE_SECONDS
    relay = Relay(db, RedisStreamsTransport(redis))
    assert await relay.drain() == 0  # still leased to the dead process
    await asyncio.sleep(max(0.0, claimed_until - time.monotonic()) + 0.2)
    assert await relay.drain() == 2
    assert await redis.xlen(STREAM) == 4
    while await consumer.read_new():
        pass
    assert len(rec.calls) == 2  # the redelivered copies were skipped before the handler ran
    assert await effects(db, rec.name) == 2
    assert await _pending(redis, rec.name) == 0


async def test_failed_handler_stays_pending_and_is_reclaimed(
    db: Database, redis: Any, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("streams-retry", fail_times=1))
    first = _consumer(db, redis, rec, "dies", claim_idle_seconds=0.1)
    await first.ensure_group()
    await _publish(db, 1)
    await Relay(db, RedisStreamsTransport(redis)).drain()
    assert await first.read_new() == 0  # handler raised: not acknowledged
    assert await _pending(redis, rec.name) == 1
    assert await effects(db, rec.name) == 0
    other = _consumer(db, redis, rec, "takes-over", claim_idle_seconds=0.1)
    assert await other.claim_stale() == 0  # not idle long enough yet
    await asyncio.sleep(0.15)
    assert await other.claim_stale() == 1
    assert len(rec.calls) == 2
    assert await effects(db, rec.name) == 1
    assert await _pending(redis, rec.name) == 0


async def test_consumers_of_one_group_share_the_work(
    db: Database, redis: Any, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("streams-group"))
    a = _consumer(db, redis, rec, "a")
    b = _consumer(db, redis, rec, "b")
    await a.ensure_group()
    ids = await _publish(db, 40)
    await Relay(db, RedisStreamsTransport(redis)).drain()
    a.count = b.count = 5

    async def _drain(c: StreamConsumer) -> None:
        while await c.read_new():
            pass

    await asyncio.gather(_drain(a), _drain(b))
    assert sorted(e.id for e in rec.calls) == sorted(ids)
    assert await effects(db, rec.name) == 40


async def test_each_subscriber_group_gets_every_event(
    db: Database, redis: Any, subscribers: list[Recorder]
) -> None:
    one = add(subscribers, Recorder("streams-one"))
    two = add(subscribers, Recorder("streams-two"))
    await _publish(db, 2)
    await Relay(db, RedisStreamsTransport(redis)).drain()
    # Groups created after the events were relayed still receive them (group starts at 0).
    for rec in (one, two):
        consumer = _consumer(db, redis, rec)
        await consumer.ensure_group()
        assert await consumer.read_new() == 2


async def test_app_with_redis_delivers_through_streams(
    settings: Settings, db: Database, redis: Any, redis_url: str, subscribers: list[Recorder]
) -> None:
    rec = add(subscribers, Recorder("streams-app"))
    app = create_app(settings.model_copy(update={"redis_url": redis_url}), db)
    async with app.router.lifespan_context(app):
        [event_id] = await _publish(db, 1)
        deadline = time.monotonic() + 3
        while not rec.calls:
            assert time.monotonic() < deadline, "not delivered within 3 s"
            await asyncio.sleep(0.02)
    entries = await redis.xrange(STREAM)
    assert [decode(fields).id for _, fields in entries] == [event_id]
    assert await effects(db, rec.name) == 1


@pytest.mark.postgres_only
async def test_concurrent_relays_on_postgresql_put_each_event_in_the_stream_once(
    db: Database, database_url: str, redis: Any
) -> None:
    ids = await _publish(db, 500)
    dbs = [Database(database_url) for _ in range(4)]
    try:
        relays = [Relay(d, RedisStreamsTransport(redis), batch_size=20) for d in dbs]
        await asyncio.gather(*(r.drain() for r in relays))
    finally:
        for d in dbs:
            await d.dispose()
    entries = await redis.xrange(STREAM)
    seen = [decode(fields).id for _, fields in entries]
    assert len(seen) == 500
    assert sorted(seen) == sorted(ids)
