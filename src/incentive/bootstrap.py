"""Process start-up and shut-down shared by `serve`, `worker` and the tests.

Each domain that needs something at start (a live-config refresher, the event relay, a
stock engine) registers it here, so the lifespan in app.py stays one call.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from incentive import migrations
from incentive.config import live as config_live
from incentive.db import Database
from incentive.events import runtime as events_runtime
from incentive.flash_sales.service import Purchases
from incentive.points_files import runtime as points_runtime
from incentive.settings import Settings
from incentive.stock import runtime as stock_runtime
from incentive.stock import stock_engine_from_url

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

        app.state.redis = aioredis.from_url(settings.redis_url)
    await config_live.start(app, db, settings.config_refresh_seconds)
    events_runtime.start(app, run_worker=settings.embedded_worker)
    _start_stock(app, settings, db)
    points_runtime.start(app, run_worker=settings.embedded_worker)


def _start_stock(app: FastAPI, settings: Settings, db: Database) -> None:
    # Every API process records its own purchases (group commit), worker or not.
    engine = stock_engine_from_url(settings.stock_url or settings.redis_url)
    app.state.stock = engine
    stock_runtime.install(engine)
    purchases = Purchases(db, engine)
    app.state.flash_sales = purchases

    async def _recorder(app: FastAPI) -> None:
        await purchases.recorder.run()

    app.state.background_tasks.append(_recorder)


async def stop(app: FastAPI) -> None:
    config_live.stop(app)
    engine = getattr(app.state, "stock", None)
    if engine is not None:
        stock_runtime.install(None)
        await engine.aclose()
    redis = getattr(app.state, "redis", None)
    if redis is not None:
        await redis.aclose()
