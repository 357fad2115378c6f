"""A Redis pub/sub subscription that always lets go of its connection.

redis-py's ``PubSub.aclose()`` can wait forever in ``wait_closed()`` when the subscription's
task was cancelled mid-read (redis/redis-py#3941, open); with ``async with redis.pubsub()`` that
wait sat in a server's shutdown and stalled it (seen once in CI, once in a test teardown). Here
the close is bounded, and a close that does not finish in time drops the connection without
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

CLOSE_SECONDS = 2.0


@contextlib.asynccontextmanager
async def subscribed(redis: Any, channel: str) -> AsyncIterator[Any]:
    """A ``PubSub`` subscribed to ``channel`` (subscribe confirmations not delivered)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        yield pubsub
    finally:
        try:
            await asyncio.wait_for(pubsub.aclose(), CLOSE_SECONDS)
        except Exception:
            log.warning("pub/sub close did not finish; connection dropped", exc_info=True)
            connection = pubsub.connection
            if connection is not None:
                await connection.disconnect(nowait=True)
