"""Plumbing for commands that work on the stock store (`incentive flash-sales reconcile`,
`incentive rewards reconcile`): the configured database, stock store and live config, and
refusals as a one-line error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import typer

from incentive.db import Database
from incentive.errors import IncentiveError
from incentive.settings import get_settings
from incentive.stock.engine import StockEngine, stock_engine_from_url


def run_with_store(
    work: Callable[[Database, StockEngine], Awaitable[str]], embedded_hint: str
) -> None:
    """Echo what ``work(db, engine)`` returns; the embedded store lives in the server's
    process, so without a shared store the command says which route to use instead."""
    from incentive.config.live import LiveConfig, live_config

    settings = get_settings()
    url = settings.stock_url or settings.redis_url
    if url is None:
        typer.echo(
            "the embedded stock store lives inside the `incentive serve` process: use "
            + embedded_hint,
            err=True,
        )
        raise typer.Exit(2)

    async def _go() -> str:
        db = Database.for_settings(settings)
        engine = stock_engine_from_url(url)
        config = LiveConfig(db)
        try:
            await config.reload()
            live_config.install(config)
            return await work(db, engine)
        finally:
            live_config.install(None)
            await engine.aclose()
            await db.dispose()

    try:
        typer.echo(asyncio.run(_go()))
    except IncentiveError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
