"""CLI: `incentive events worker` (relay + consumers) and `incentive events status`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import typer

from incentive.db import Database
from incentive.settings import get_settings

events_app = typer.Typer(no_args_is_help=True, help="Transactional outbox and event delivery")


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


@events_app.command("worker")
def worker() -> None:
    """Relay the outbox and run every subscriber until SIGINT/SIGTERM (safe to run many)."""
    # Importing the routers imports every domain, which registers their subscribers.
    import incentive.routers  # noqa: F401
    from incentive.config.live import LiveConfig, live_config, run_refresher
    from incentive.events.runtime import run_event_worker

    settings = get_settings()

    async def _run() -> None:
        db = Database(settings.resolved_database_url)
        redis = None
        if settings.redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis_url)
        config = LiveConfig(db)
        await config.reload()
        live_config.install(config)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(run_refresher(config, settings.config_refresh_seconds, redis)),
            asyncio.create_task(run_event_worker(db, redis)),
        ]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if redis is not None:
                await redis.aclose()
            await db.dispose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run())


@events_app.command("status")
def status() -> None:
    """Unpublished outbox events and the age of the oldest (JSON)."""
    from incentive.events.backends.inprocess import InProcessTransport
    from incentive.events.relay import Relay

    settings = get_settings()

    async def _run() -> tuple[int, float]:
        db = Database(settings.resolved_database_url)
        try:
            return await Relay(db, InProcessTransport(db)).measure_lag()
        finally:
            await db.dispose()

    pending, lag = asyncio.run(_run())
    typer.echo(json.dumps({"pending": pending, "oldest_age_seconds": round(lag, 3)}))
