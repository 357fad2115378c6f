"""CLI: `incentive flash-sales reconcile|rebuild ID` against the configured stock store."""

from __future__ import annotations

import typer

from incentive.db import Database
from incentive.stock import StockEngine
from incentive.stock.commands import run_with_store

flash_sales_app = typer.Typer(no_args_is_help=True, help="Flash-sale stock operations")


def register(app: typer.Typer) -> None:
    app.add_typer(flash_sales_app, name="flash-sales")


def _run(sale_id: str, force: bool) -> None:
    from incentive.flash_sales import service

    async def work(db: Database, engine: StockEngine) -> str:
        report = await service.reconcile(db, engine, sale_id, actor="cli", force=force)
        return report.model_dump_json(indent=2)

    hint = f"POST /api/v1/flash-sales/{sale_id}/reconcile" + ("?force=true" if force else "")
    run_with_store(work, hint)


@flash_sales_app.command("reconcile")
def reconcile(sale_id: str) -> None:
    """Report drift between the database and the stock store, and repair it (the sale is
    paused for `flash_sale.drain_seconds` meanwhile)."""
    _run(sale_id, force=False)


@flash_sales_app.command("rebuild")
def rebuild(sale_id: str) -> None:
    """Rebuild the sale's stock store from the database (after the store lost its data)."""
    _run(sale_id, force=True)
