"""Reward campaigns: the live chain, its stock, and what was given.

- **Activation** (``open_chain``, from the kind's ``on_activate``): the approved rules become
  the live chain (``reward_items``) and each reward's stock is split into its pool, in the
  activation's transaction (a pool left by an activation or an add that rolled back is set
  again from the reward being inserted: no grant can hold a reward not yet committed).
- **Live operation** (operators, audited): ``add``, ``reorder``, ``restock``, ``retire``.
  Every process sees a change within ``claims.CHAIN_TTL_SECONDS`` plus one read; a restock
  reaches the shared stock store at once.
- **Stock**: the database is the truth (``stock_total`` minus the grants holding the reward:
  ``held``); ``rewards.stock`` rebuilds and reconciles the stock store from it.
- **Reading**: stock levels, the report (per reward, user type and day, fallbacks counted),
  a campaign's grants and a customer's rewards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.config import live_config
from incentive.coupons import batches as coupon_batches
from incentive.coupons.errors import BatchNotFound
from incentive.db import utcnow
from incentive.errors import InvalidField
from incentive.kit.idempotency import Caller
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice
from incentive.rewards import metrics
from incentive.rewards.errors import RewardNotFound, RewardTaken
from incentive.rewards.grants import pool_of
from incentive.rewards.keys import REWARD_BUCKETS
from incentive.rewards.models import RewardGrant, RewardItem
from incentive.rewards.rules import RewardOption, RewardRules, check_asset, reward_rules
from incentive.stock import StockEngine
from incentive.stock.engine import even_split
from incentive.stock.errors import StockPoolMissing

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the live chain


async def items(
    session: AsyncSession, campaign_id: str, *, retired: bool = True
) -> list[RewardItem]:
    stmt = select(RewardItem).where(RewardItem.campaign_id == campaign_id)
    if not retired:
        stmt = stmt.where(RewardItem.retired_at.is_(None))
    return list(await session.scalars(stmt.order_by(RewardItem.position, RewardItem.code)))


async def get_item(session: AsyncSession, campaign_id: str, code: str) -> RewardItem:
    item = await session.get(RewardItem, (campaign_id, code), populate_existing=True)
    if item is None:
        raise RewardNotFound(f"campaign {campaign_id} has no reward {code!r}", reward=code)
    return item


async def _check_delivery(
    session: AsyncSession, campaign: CampaignFacts, option: RewardOption, field: str
) -> None:
    """A coupon reward's batch exists, is of the delivery's kind (ours or a provider's) and,
    for a merchant's campaign, belongs to a campaign of that merchant."""
    if option.batch_id is None:
        return
    try:
        batch = await coupon_batches.get_batch(session, option.batch_id)
    except BatchNotFound:
        raise InvalidField(
            f"{field}.batch_id", "exists", f"no coupon batch {option.batch_id}"
        ) from None
    third_party = batch.provider_id is not None
    if third_party != (option.delivery == "third_party"):
        wanted = "a provider's" if option.delivery == "third_party" else "our own"
        raise InvalidField(
            f"{field}.batch_id", "delivery", f"{option.delivery} rewards need {wanted} batch"
        )
    if campaign.owner_type == "merchant":
        owner = None
        if batch.campaign_id:
            owner = (await campaigns.campaign_facts(session, batch.campaign_id)).merchant_id
        if owner != campaign.merchant_id:
            raise InvalidField(
                f"{field}.batch_id",
                "same-merchant",
                "a merchant's reward gives coupons of that merchant's own campaigns",
            )


def _buckets(rules: RewardRules, stock: int) -> int:
    return max(1, min(rules.buckets or int(live_config.get(REWARD_BUCKETS)), stock))


async def _insert(
    session: AsyncSession,
    engine: StockEngine,
    campaign: CampaignFacts,
    option: RewardOption,
    position: int,
    field: str,
) -> RewardItem:
    rules = reward_rules(campaign)
    await _check_delivery(session, campaign, option, field)
    now = utcnow()
    item = RewardItem(
        campaign_id=campaign.id,
        code=option.code,
        position=position,
        title=option.title,
        type=option.type,
        delivery=option.delivery,
        amount=option.amount,
        audience=option.audience,
        per_user_limit=option.per_user_limit,
        batch_id=option.batch_id,
        message=option.message,
        stock_total=option.stock,
        low_stock_threshold=option.low_stock_threshold,
        buckets=_buckets(rules, option.stock),
        created_at=now,
        updated_at=now,
    )
    session.add(item)
    await session.flush()
    # In the transaction: a reward the chain lists always has its pool. The reward is new
    # (its row is ours until the commit), so no grant holds any of it: a pool already there
    # was left by an insert that rolled back after its split (maybe with another stock),
    # and is set again from this one.
    pool = pool_of(campaign.id, option.code)
    if not await engine.split(pool, option.stock, item.buckets):
        await engine.drop(pool)
        await engine.split(pool, option.stock, item.buckets)
    return item


async def open_chain(session: AsyncSession, engine: StockEngine, campaign: CampaignFacts) -> None:
    """The approved rewards become the live chain, each with its stock split (first
    activation only; a resumed campaign keeps its live chain)."""
    existing = await session.scalar(
        select(func.count()).select_from(RewardItem).where(RewardItem.campaign_id == campaign.id)
    )
    if existing:
        return
    for position, option in enumerate(reward_rules(campaign).rewards):
        await _insert(session, engine, campaign, option, position, f"rules.rewards[{position}]")


async def add(
    session: AsyncSession,
    engine: StockEngine,
    campaign: CampaignFacts,
    option: RewardOption,
    actor: Caller,
) -> RewardItem:
    """Add a reward at the end of the live chain (409 ``reward-exists`` for a code in use)."""
    try:
        check_asset(option, reward_rules(campaign).budget_asset)
    except ValueError as exc:
        raise InvalidField("type", "budget-asset", str(exc)) from None
    if await session.get(RewardItem, (campaign.id, option.code)) is not None:
        raise RewardTaken(
            f"campaign {campaign.id} has a reward {option.code!r}", reward=option.code
        )
    last = await session.scalar(
        select(func.max(RewardItem.position)).where(RewardItem.campaign_id == campaign.id)
    )
    item = await _insert(session, engine, campaign, option, (last or 0) + 1, "body")
    await record_audit(
        session, actor, "rewards.added", f"{campaign.id}:{option.code}", option.model_dump()
    )
    return item


async def reorder(
    session: AsyncSession, campaign_id: str, codes: Sequence[str], actor: Caller
) -> list[RewardItem]:
    """Set the chain's order: ``codes`` lists every live reward once."""
    live = await items(session, campaign_id, retired=False)
    if sorted(codes) != sorted(i.code for i in live):
        raise InvalidField(
            "codes", "every-live-reward", "list every live reward of the chain exactly once"
        )
    by_code = {i.code: i for i in live}
    for position, code in enumerate(codes):
        by_code[code].position = position
        by_code[code].updated_at = utcnow()
    await session.flush()
    await record_audit(session, actor, "rewards.reordered", campaign_id, {"codes": list(codes)})
    return await items(session, campaign_id)


async def retire(session: AsyncSession, campaign_id: str, code: str, actor: Caller) -> RewardItem:
    """Take a reward out of the chain (its grants and its stock stay on record)."""
    item = await get_item(session, campaign_id, code)
    if item.retired_at is None:
        # The live rewards locked (in key order) before they are counted: two retires at
        # once must not both see the other's reward still live.
        live = list(
            await session.scalars(
                select(RewardItem.code)
                .where(RewardItem.campaign_id == campaign_id, RewardItem.retired_at.is_(None))
                .order_by(RewardItem.code)
                .with_for_update()
            )
        )
        if code not in live:  # retired meanwhile by another operator
            return await get_item(session, campaign_id, code)
        if len(live) == 1:
            raise InvalidField("code", "last-reward", "the chain needs at least one live reward")
        item.retired_at = item.updated_at = utcnow()
        await session.flush()
        await record_audit(session, actor, "rewards.retired", f"{campaign_id}:{code}")
    return item


async def restock(
    session: AsyncSession,
    engine: StockEngine,
    campaign_id: str,
    code: str,
    units: int,
    actor: Caller,
) -> RewardItem:
    """Give a reward ``units`` more. Under the reward's row lock (which a rebuild takes too,
    so the two never count the units twice) the total goes up and the units reach the stock
    store before the commit: grants use them at once. Should the commit then fail, the units
    are taken back out of the store."""
    item = await session.get(
        RewardItem, (campaign_id, code), with_for_update=True, populate_existing=True
    )
    if item is None:
        raise RewardNotFound(f"campaign {campaign_id} has no reward {code!r}", reward=code)
    item.stock_total += units
    item.updated_at = utcnow()
    await session.flush()
    await record_audit(
        session, actor, "rewards.restocked", f"{campaign_id}:{code}", {"units": units}
    )
    pool = pool_of(campaign_id, code)
    if await engine.exists(pool):  # a lost pool is rebuilt from the new total
        restored = [0]  # what reached the store: taken back if the restock rolls back
        _take_back_on_rollback(session, engine, pool, restored)
        for bucket, share in enumerate(even_split(units, item.buckets)):
            if share:
                await engine.restore(pool, bucket, share)
                restored[0] += share
    return item


def _take_back_on_rollback(
    session: AsyncSession, engine: StockEngine, pool: str, restored: list[int]
) -> None:
    def _rolled_back(_: Any, previous: Any) -> None:
        if previous.nested or not restored[0]:  # a savepoint: the restock still stands
            return

        async def take_back() -> None:
            try:
                await engine.deduct(pool, restored[0])
            except Exception:
                # Grants used them meanwhile: the store holds fewer than it promised.
                log.exception(
                    "restocked units not taken back; run reconcile",
                    extra={"pool": pool, "units": restored[0]},
                )

        asyncio.get_running_loop().create_task(take_back())

    event.listen(session.sync_session, "after_soft_rollback", _rolled_back)


# --------------------------------------------------------------------------- stock truth


async def held(
    session: AsyncSession, campaign_id: str, code: str
) -> tuple[int, list[tuple[str, int]]]:
    """Units of the reward held by grants, and per customer."""
    rows = (
        await session.execute(
            select(RewardGrant.customer_id, func.count())
            .where(RewardGrant.campaign_id == campaign_id, RewardGrant.reward_code == code)
            .group_by(RewardGrant.customer_id)
        )
    ).all()
    per_customer = [(str(c), int(n)) for c, n in rows]
    return sum(n for _, n in per_customer), per_customer


# --------------------------------------------------------------------------- reading


async def levels(engine: StockEngine, campaign_id: str, code: str) -> int | None:
    """Units left now (None when the store lost the pool); refreshes the gauge."""
    pool = pool_of(campaign_id, code)
    try:
        if not await engine.exists(pool):
            return None
        left = sum(await engine.remaining(pool))
    except StockPoolMissing:  # dropped between the two (a reconcile)
        return None
    metrics.STOCK.labels(campaign_id, code).set(left)
    return left


GRANT_ORDER = Keyset(
    (RewardGrant.created_at, RewardGrant.id), tuple[KeyTime, KeyId], descending=True
)


async def grants_of_customer(
    session: AsyncSession, customer_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[RewardGrant]:
    stmt = select(RewardGrant).where(RewardGrant.customer_id == customer_id)
    return await GRANT_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def grants_of_campaign(
    session: AsyncSession,
    campaign_id: str,
    *,
    customer_id: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[RewardGrant]:
    stmt = select(RewardGrant).where(RewardGrant.campaign_id == campaign_id)
    if customer_id is not None:
        stmt = stmt.where(RewardGrant.customer_id == customer_id)
    return await GRANT_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class ReportRow:
    day: str
    reward: str | None
    user_type: str
    given: int
    amount: int
    with_fallback: int
    fallbacks: int


async def report(session: AsyncSession, campaign_id: str) -> list[ReportRow]:
    """What was given per day, reward (None: nothing, after every delivery failed) and user
    type, with the grants that fell back and the skipped steps counted."""
    g = RewardGrant
    rows = (
        await session.execute(
            select(
                g.day,
                g.reward_code,
                g.user_type,
                func.count(),
                func.coalesce(func.sum(g.amount), 0),
                func.coalesce(func.sum(case((g.fallbacks > 0, 1), else_=0)), 0),
                func.coalesce(func.sum(g.fallbacks), 0),
            )
            .where(g.campaign_id == campaign_id)
            .group_by(g.day, g.reward_code, g.user_type)
            .order_by(g.day, g.reward_code, g.user_type)
        )
    ).all()
    return [
        ReportRow(str(d), r, str(u), int(n), int(a), int(f), int(s)) for d, r, u, n, a, f, s in rows
    ]
