"""CLI: `incentive rewards stock|reconcile CAMPAIGN` against the configured stock store."""

from __future__ import annotations

import json

import typer

from incentive.db import Database
from incentive.stock import StockEngine
from incentive.stock.commands import run_with_store

rewards_app = typer.Typer(no_args_is_help=True, help="Reward stock operations")


def register(app: typer.Typer) -> None:
    app.add_typer(rewards_app, name="rewards")


@rewards_app.command("stock")
def stock(campaign_id: str) -> None:
    """Each reward of the campaign: its total, units held by grants, and units left."""
    from incentive.rewards import service

    async def work(db: Database, engine: StockEngine) -> str:
        async with db.unit_of_work() as session:
            rows = []
            for item in await service.items(session, campaign_id):
                held, _ = await service.held(session, campaign_id, item.code)
                left = await service.levels(engine, campaign_id, item.code)
                rows.append(
                    {
                        "code": item.code,
                        "total": item.stock_total,
                        "held": held,
                        "left": left,
                        "retired": item.retired_at is not None,
                    }
                )
        return json.dumps({"campaign_id": campaign_id, "rewards": rows}, indent=2)

    run_with_store(work, f"GET /api/v1/campaigns/{campaign_id}/rewards")


@rewards_app.command("reconcile")
def reconcile(campaign_id: str) -> None:
    """Reset every reward pool of the campaign to the database's truth (grants answer 503
    for `rewards.drain_seconds` meanwhile)."""
    from incentive.rewards import stock as reward_stock

    async def work(db: Database, engine: StockEngine) -> str:
        done = await reward_stock.reconcile(db, engine, campaign_id)
        return json.dumps(
            {"campaign_id": campaign_id, "rewards": [r.__dict__ for r in done]}, indent=2
        )

    run_with_store(work, f"POST /api/v1/campaigns/{campaign_id}/rewards/reconcile")
