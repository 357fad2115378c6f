"""CLI: `incentive events status` (the relay and consumers run in `incentive worker`)."""

from __future__ import annotations

import asyncio
import json

import typer

from incentive.db import Database
from incentive.settings import get_settings

events_app = typer.Typer(no_args_is_help=True, help="Transactional outbox and event delivery")


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


@events_app.command("status")
def status() -> None:
    """Unpublished outbox events and the age of the oldest (JSON)."""
    from incentive.events.backends.inprocess import InProcessTransport
    from incentive.events.relay import Relay

    settings = get_settings()

    async def _run() -> tuple[int, float]:
        db = Database.for_settings(settings)
        try:
            return await Relay(db, InProcessTransport(db)).measure_lag()
        finally:
            await db.dispose()

    pending, lag = asyncio.run(_run())
    typer.echo(json.dumps({"pending": pending, "oldest_age_seconds": round(lag, 3)}))
