"""Flash sales: creation, status and reconciliation of the stock store with the database.

The kind's lifecycle (activation, the stock split) is in ``kind.py``; the purchase hot path
in ``purchases.py``.

The database is the source of truth: ``reconcile`` and ``rebuild`` close the sale's
flow-control switch, wait ``flash_sale.drain_seconds`` for requests in flight to finish, then
reset the stock store to ``total - committed`` (and each buyer's quota to what they bought).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.principal import Principal
from incentive.campaigns import flows
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.config import live_config
from incentive.config import service as config
from incentive.db import Database
from incentive.errors import NotFound
from incentive.flash_sales.errors import AlreadyActivated, NotOnSale
from incentive.flash_sales.keys import DRAIN_SECONDS, FLASH_SALE_FLOW_CONTROL
from incentive.flash_sales.kind import FlashSaleRules, bucket_count, pool_of, sale_rules
from incentive.flash_sales.models import FlashSale, Purchase
from incentive.flash_sales.schemas import FlashSaleIn, ReconcileOut
from incentive.stock import StockEngine
from incentive.stock.engine import even_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sale:
    """A flash sale as its campaign approved it, with its stock row."""

    campaign: CampaignFacts
    rules: FlashSaleRules
    stock: FlashSale

    @property
    def id(self) -> str:
        return self.campaign.id


# --------------------------------------------------------------------------- lifecycle


async def create(session: AsyncSession, principal: Principal, body: FlashSaleIn) -> Sale:
    """A draft ``flash_sale`` campaign (its kind adds the stock row); nothing reaches the
    stock store before activation. Without ``buckets`` the live ``flash_sale.buckets`` is
    written into the rules now, so the reviewer sees the split that will run."""
    buckets = bucket_count(body.buckets, body.total_stock)
    rules = {
        "kind": "flash_sale",
        "sku": body.sku,
        "item_name": body.item_name,
        "price_fen": body.price_fen,
        "total_stock": body.total_stock,
        "per_user_limit": body.per_user_limit,
        "buckets": buckets,
    }
    campaign = await campaigns.create_campaign(
        session,
        principal,
        kind="flash_sale",
        name=body.name,
        description=body.description,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        rules=rules,
        merchant_id=body.merchant_id,
    )
    return await get_sale(session, campaign.id)


async def get_sale(session: AsyncSession, sale_id: str) -> Sale:
    stock = await session.get(FlashSale, sale_id, populate_existing=True)
    if stock is None:
        raise NotFound(f"flash sale {sale_id} does not exist", flash_sale_id=sale_id)
    campaign = await campaigns.campaign_facts(session, sale_id)
    return Sale(campaign, sale_rules(campaign), stock)


async def activate(session: AsyncSession, principal: Principal, sale_id: str) -> Sale:
    """Move the approved campaign to active: the same transition as
    ``POST /campaigns/{id}/transitions``, whose kind hook fixes the buckets and announces the
    split. A second activation is a 409 (a paused sale is resumed by a transition)."""
    sale = await get_sale(session, sale_id)
    await campaigns.managed_campaign(session, principal, sale_id)
    if sale.stock.activated_at is not None:
        raise AlreadyActivated("the flash sale was already activated", flash_sale_id=sale_id)
    await flows.transition(session, principal, sale_id, to_status="active")
    return await get_sale(session, sale_id)


# --------------------------------------------------------------------------- status


async def sold(session: AsyncSession, sale_id: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(Purchase.quantity), 0)).where(
            Purchase.flash_sale_id == sale_id
        )
    )
    return int(total or 0)


async def bucket_levels(engine: StockEngine, sale: Sale) -> list[int] | None:
    """Per-bucket units left, or None before the split or when the store lost the pool."""
    if sale.stock.split_at is None or not await engine.exists(pool_of(sale.id)):
        return None
    return await engine.remaining(pool_of(sale.id))


# --------------------------------------------------------------------------- reconcile


async def set_flow(db: Database, sale_id: str, open_: bool, actor: str) -> bool:
    """Set the sale's flow-control switch; returns the previous state."""
    async with db.unit_of_work() as session:
        current: dict[str, bool] = dict(
            (await config.get_value(session, FLASH_SALE_FLOW_CONTROL.name)).value
        )
        previous = current.get(sale_id, True)
        if previous != open_:
            current[sale_id] = open_
            await config.set_value(session, FLASH_SALE_FLOW_CONTROL.name, current, actor=actor)
    if previous != open_ and live_config.current.db is not None:
        # This process sees its own change at once; the others within the refresh interval.
        await live_config.current.refresh()
    return previous


async def reconcile(
    db: Database, engine: StockEngine, sale_id: str, *, actor: str, force: bool = False
) -> ReconcileOut:
    """Make the stock store agree with the database (the source of truth).

    Closes the flow-control switch, waits ``flash_sale.drain_seconds`` so no purchase is in
    flight, then compares ``total - committed`` with the units in the store. On drift (or
    ``force``, or a pool lost with the store's data) the pool is reset: levels evenly split
    over the buckets, each buyer's quota set to what they bought. The switch is then put back
    as it was. Stock deducted by a request that crashed before its commit is returned here.
    """
    async with db.unit_of_work() as session:
        sale = await get_sale(session, sale_id)
        if sale.stock.split_at is None or sale.stock.buckets is None:
            raise NotOnSale("the stock was never split: activate the sale first")
        buckets, total = sale.stock.buckets, sale.rules.total_stock
    was_open = await set_flow(db, sale_id, False, actor)
    try:
        await asyncio.sleep(float(live_config.get(DRAIN_SECONDS)))
        pool = pool_of(sale_id)
        async with db.unit_of_work() as session:
            committed = await sold(session, sale_id)
            per_user = (
                await session.execute(
                    select(Purchase.user_id, func.sum(Purchase.quantity))
                    .where(Purchase.flash_sale_id == sale_id)
                    .group_by(Purchase.user_id)
                )
            ).all()
        before = await engine.remaining(pool) if await engine.exists(pool) else None
        drift = (total - committed) - (sum(before) if before is not None else 0)
        repaired = force or before is None or drift != 0
        quotas = 0
        if repaired:
            await engine.drop(pool)
            await engine.rebuild(pool, even_split(total - committed, buckets))
            for user_id, quantity in per_user:
                await engine.reserve_quota(pool, str(user_id), int(quantity), int(quantity))
                quotas += 1
        after = await engine.remaining(pool)
    finally:
        if was_open:
            await set_flow(db, sale_id, True, actor)
    if repaired:
        log.warning(
            "flash sale stock reconciled",
            extra={"flash_sale_id": sale_id, "drift": drift, "before": before, "after": after},
        )
    return ReconcileOut(
        flash_sale_id=sale_id,
        total=total,
        committed=committed,
        before=before,
        after=after,
        drift=drift,
        quotas_repaired=quotas,
        repaired=repaired,
    )
