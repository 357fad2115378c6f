"""Wiring of the relay and the subscribers' consumers into a worker process."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from incentive.db import Database
from incentive.domains import WorkerJob
from incentive.events.backends import Transport
from incentive.events.backends.inprocess import InProcessTransport
from incentive.events.backends.redis_streams import RedisStreamsTransport, StreamConsumer
from incentive.events.bus import all_subscriptions
from incentive.events.relay import Relay


def transport_for(db: Database, redis: Any | None) -> Transport:
    """Redis Streams when Redis is configured, else direct in-process delivery."""
    if redis is not None:
        return RedisStreamsTransport(redis)
    return InProcessTransport(db)


async def run_event_worker(db: Database, redis: Any | None) -> None:
    """Run the relay and, with Redis, one stream consumer per subscription, until cancelled.

    Subscriptions are read when this starts: register them at import time.
    """
    relay = Relay(db, transport_for(db, redis))
    async with asyncio.TaskGroup() as group:
        group.create_task(relay.run())
        if redis is not None:
            for subscription in all_subscriptions():
                group.create_task(StreamConsumer(db, redis, subscription).run())


async def _relay(app: FastAPI) -> None:
    await run_event_worker(app.state.db, getattr(app.state, "redis", None))


JOBS = (WorkerJob("events.relay", _relay),)
