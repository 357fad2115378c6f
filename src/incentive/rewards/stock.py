"""Reward stock kept true to the database, outside any request.

- ``rebuild`` sets a pool from the database (``stock_total`` minus the grants holding the
  reward, and each customer's use) after the store lost it — under the reward's row lock,
  which a restock takes too, so the two never count units twice;
- ``reconcile`` resets every pool of a campaign on an operator's word;
- ``watch`` (the ``rewards.stock_watch`` job) refreshes the gauges, fires a low-stock alert
  once per fall below a threshold, and rebuilds pools the store lost.

Both rebuilding paths wait ``rewards.drain_seconds`` with the pool gone (grants answer 503
meanwhile), then count the database under the reward's row lock, which waits for every grant
still in flight (each holds the row shared from before its take until it ends): a grant that
took a unit from the lost pool is counted, however late it commits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from incentive import events
from incentive.campaigns import service as campaigns
from incentive.config import live_config
from incentive.db import Database, utcnow
from incentive.rewards import metrics
from incentive.rewards.grants import fence_exclusive, pool_of, stock_user
from incentive.rewards.keys import DRAIN_SECONDS
from incentive.rewards.models import RewardItem
from incentive.rewards.service import held, items, levels
from incentive.stock import StockEngine
from incentive.stock.engine import even_split

log = logging.getLogger(__name__)

LOW_STOCK_TOPIC = "rewards.stock_low"


@dataclass(frozen=True)
class Rebuilt:
    code: str
    total: int
    held: int
    before: list[int] | None
    after: list[int]


async def rebuild(db: Database, engine: StockEngine, campaign_id: str, code: str) -> Rebuilt | None:
    """Set the reward's pool from the database, under its row lock, if it is missing (the
    caller waited ``rewards.drain_seconds`` after it went missing). None when another
    process rebuilt it meanwhile."""
    pool = pool_of(campaign_id, code)
    async with db.unit_of_work() as session:
        item = await session.get(RewardItem, (campaign_id, code), with_for_update=True)
        await fence_exclusive(session, pool)
        if item is None or await engine.exists(pool):
            return None
        total = item.stock_total
        taken, per_customer = await held(session, campaign_id, code)
        levels = even_split(max(total - taken, 0), item.buckets)
        # Each customer's use is back before any unit is: a grant between the two would take
        # against an empty quota and pass the reward's per-customer limit. The pool is laid
        # out empty first (a cluster places a quota by the pool's bucket count).
        await engine.rebuild(pool, [0] * item.buckets)
        for customer, n in per_customer:
            await engine.reserve_quota(pool, stock_user(customer), n, n)
        await engine.rebuild(pool, levels)
    log.warning(
        "reward stock rebuilt from the database",
        extra={"campaign_id": campaign_id, "reward": code, "total": total, "held": taken},
    )
    return Rebuilt(code, total, taken, None, levels)


async def reconcile(db: Database, engine: StockEngine, campaign_id: str) -> list[Rebuilt]:
    """Reset every reward pool of the campaign to the database's truth: the pools are taken
    away (grants answer 503 meanwhile), ``rewards.drain_seconds`` pass for grants in flight
    to commit, then each is rebuilt. Returns each pool's levels before and after."""
    async with db.unit_of_work() as session:
        codes = [i.code for i in await items(session, campaign_id)]
    before = {}
    for code in codes:
        pool = pool_of(campaign_id, code)
        before[code] = await engine.remaining(pool) if await engine.exists(pool) else None
        await engine.drop(pool)
    await asyncio.sleep(float(live_config.get(DRAIN_SECONDS)))
    done = []
    for code in codes:
        rebuilt = await rebuild(db, engine, campaign_id, code)
        if rebuilt is not None:
            done.append(Rebuilt(code, rebuilt.total, rebuilt.held, before[code], rebuilt.after))
    return done


async def watch(db: Database, engine: StockEngine) -> None:
    """One pass of the stock watch: every live reward of an active campaign gets its gauge
    and, below its threshold, one low-stock alert; a pool the store lost is rebuilt."""
    async with db.reader() as conn:  # an idle watch takes no write lock
        active = await campaigns.active_ids(conn, "reward")
        if not active:
            return
        rows = (
            await conn.execute(
                select(
                    RewardItem.campaign_id,
                    RewardItem.code,
                    RewardItem.low_stock_threshold,
                    RewardItem.low_since,
                ).where(RewardItem.retired_at.is_(None), RewardItem.campaign_id.in_(sorted(active)))
            )
        ).all()
    missing = []
    for row in rows:
        left = await levels(engine, row.campaign_id, row.code)
        if left is None:
            missing.append((row.campaign_id, row.code))
            continue
        threshold = row.low_stock_threshold
        if threshold is None:
            continue
        if left < threshold and row.low_since is None:
            await _alert(db, row.campaign_id, row.code, left, threshold)
        elif left >= threshold and row.low_since is not None:
            async with db.unit_of_work() as session:
                await session.execute(
                    update(RewardItem)
                    .where(RewardItem.campaign_id == row.campaign_id, RewardItem.code == row.code)
                    .values(low_since=None)
                )
    if missing:
        log.error("reward stock missing from the stock store; rebuilding", extra={"pools": missing})
        await asyncio.sleep(float(live_config.get(DRAIN_SECONDS)))
        for campaign_id, code in missing:
            await rebuild(db, engine, campaign_id, code)


async def _alert(db: Database, campaign_id: str, code: str, left: int, threshold: int) -> None:
    async with db.unit_of_work() as session:
        fired = await session.scalar(
            update(RewardItem)
            .where(
                RewardItem.campaign_id == campaign_id,
                RewardItem.code == code,
                RewardItem.low_since.is_(None),
            )
            .values(low_since=utcnow())
            .returning(RewardItem.code)
        )
        if fired is None:  # another process fired it
            return
        await events.publish(
            session,
            LOW_STOCK_TOPIC,
            {"campaign_id": campaign_id, "reward": code, "left": left, "threshold": threshold},
            key=campaign_id,
        )
    metrics.LOW_STOCK.labels(campaign_id, code).inc()
    log.warning(
        "reward stock low",
        extra={"campaign_id": campaign_id, "reward": code, "left": left, "threshold": threshold},
    )
