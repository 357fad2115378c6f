"""A real relay process for crash tests: ``python -m tests.events.relay_process MODE ...``.

- ``stuck DB_URL``: one relay pass over the in-process bus whose ``lease`` handler writes its
  effect (uncommitted), says ``IN_HANDLER`` on stdout and then hangs, to be killed there.
- ``streams DB_URL REDIS_URL``: one relay pass to Redis Streams (the test decides where the
  process dies by what it lets through to the database).
Both claim with a 2 s lease.
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy.ext.asyncio import AsyncSession

from incentive import domains, events
from incentive.db import Database
from incentive.events.relay import Relay
from tests.events.conftest import EFFECT_TOPIC

LEASE_SECONDS = 2.0


IN_HANDLER = "IN_HANDLER"


async def _stuck(db_url: str) -> None:
    from incentive.events.backends.inprocess import InProcessTransport

    async def hangs(session: AsyncSession, event: events.Event) -> None:
        await events.publish(session, EFFECT_TOPIC, {"of": event.id, "by": "lease"})
        await session.flush()  # the effect is written, not committed
        sys.stdout.write(IN_HANDLER + "\n")
        sys.stdout.flush()
        await asyncio.sleep(3600)

    events.subscribe("test.happened", "lease", hangs)
    db = Database(db_url)
    await Relay(db, InProcessTransport(db), lease_seconds=LEASE_SECONDS).run_once()


async def _streams(db_url: str, redis_url: str) -> None:
    import redis.asyncio as aioredis

    from incentive.events.backends.redis_streams import RedisStreamsTransport

    db = Database(db_url)
    client = aioredis.from_url(redis_url)
    await Relay(db, RedisStreamsTransport(client), lease_seconds=LEASE_SECONDS).run_once()


if __name__ == "__main__":
    domains.load()
    if sys.argv[1] == "stuck":
        asyncio.run(_stuck(sys.argv[2]))
    else:
        asyncio.run(_streams(sys.argv[2], sys.argv[3]))
