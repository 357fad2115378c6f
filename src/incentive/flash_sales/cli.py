"""CLI: `incentive flash-sales reconcile|rebuild ID` against the configured stock store."""

from __future__ import annotations

import asyncio

import typer

from incentive.db import Database
from incentive.errors import IncentiveError
from incentive.settings import get_settings

flash_sales_app = typer.Typer(no_args_is_help=True, help="Flash-sale stock operations")


def register(app: typer.Typer) -> None:
    app.add_typer(flash_sales_app, name="flash-sales")


def _run(sale_id: str, force: bool) -> None:
    from incentive.config.live import LiveConfig, live_config
    from incentive.flash_sales import service
    from incentive.stock import stock_engine_from_url

    settings = get_settings()
    url = settings.stock_url or settings.redis_url
    if url is None:
        typer.echo(
            "the embedded stock store lives inside the `incentive serve` process: use "
            f"POST /api/v1/flash-sales/{sale_id}/reconcile" + ("?force=true" if force else ""),
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
            report = await service.reconcile(db, engine, sale_id, actor="cli", force=force)
            return report.model_dump_json(indent=2)
        finally:
            live_config.install(None)
            await engine.aclose()
            await db.dispose()

    try:
        typer.echo(asyncio.run(_go()))
    except IncentiveError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc


@flash_sales_app.command("reconcile")
def reconcile(sale_id: str) -> None:
    """Report drift between the database and the stock store, and repair it (the sale is
    paused for `flash_sale.drain_seconds` meanwhile)."""
    _run(sale_id, force=False)


@flash_sales_app.command("rebuild")
def rebuild(sale_id: str) -> None:
    """Rebuild the sale's stock store from the database (after the store lost its data)."""
    _run(sale_id, force=True)
