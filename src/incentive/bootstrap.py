"""Process start-up and shut-down shared by `serve`, `worker` and the tests.

Each domain's ``runtime.start(app)`` runs in the order of ``domains.DOMAINS`` (its
``stop(app)`` in reverse), and in worker processes (``settings.embedded_worker``) every
domain's ``JOBS`` become background tasks; the lifespan in app.py stays one call.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from incentive import domains, migrations
from incentive.db import Database
from incentive.settings import Settings

log = logging.getLogger(__name__)


async def start(app: FastAPI, settings: Settings, db: Database, *, migrate: bool) -> None:
    if migrate and db.is_sqlite:
        # The embedded default upgrades itself; PostgreSQL is upgraded by `incentive db upgrade`.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await migrations.upgrade(db.engine)
        if settings.demo_data:
            from incentive import demo

            await demo.load_if_empty(db)
    app.state.redis = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        # Bounded: a burst of requests waits for one of a few connections (then 503s)
        # instead of opening one per request.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_pool_size,
            timeout=settings.redis_pool_timeout,
        )
        app.state.redis = aioredis.Redis.from_pool(pool)
    for runtime in domains.runtimes():
        if hasattr(runtime, "start"):
            await runtime.start(app)
    if settings.embedded_worker:
        app.state.background_tasks.extend(job.loop for job in domains.worker_jobs())


async def stop(app: FastAPI) -> None:
    for runtime in reversed(domains.runtimes()):
        if hasattr(runtime, "stop"):
            await runtime.stop(app)
    redis = getattr(app.state, "redis", None)
    if redis is not None:
        # Bounded for the reason of kit/subscription.py: closing a connection whose read was
        # cancelled can wait forever in redis-py (redis/redis-py#3941); at shutdown, let go.
        try:
            await asyncio.wait_for(redis.aclose(), 5)
        except TimeoutError:
            log.warning("Redis connections not closed within 5 s; left to the process exit")
