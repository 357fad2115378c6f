"""Flash sales: creation, activation (stock split once), purchases, status, reconciliation.

The purchase path holds no database transaction while it talks to the stock store:

1. facts of the sale (cached for ``FACTS_TTL_SECONDS``), window and flow-control switch;
2. the buyer's per-user quota is reserved, then stock is deducted — both atomic in the
   stock engine, so neither can go below zero under any concurrency;
3. the purchase is handed to the process's ``PurchaseRecorder``, which writes everything
   queued meanwhile in one transaction (group commit) and wakes each request only after
   that commit: a 201 is never sent for a purchase the database does not hold;
4. if the write definitely failed, the stock and the quota are given back; if the commit's
   outcome is unknown (connection lost while committing) nothing is given back — that stock
   stays stranded, never oversold, until ``reconcile`` returns it.

A retry under an ``Idempotency-Key`` already recorded answers the recorded purchase: the same
key running in this process waits for the first; otherwise the retry surfaces as a refused
quota, a sold-out or a conflicting insert (its deduction given back), and only then is the
key looked up — no database read on the hot path.

The database is the source of truth: ``reconcile`` and ``rebuild`` close the sale's
flow-control switch, wait ``flash_sale.drain_seconds`` for requests in flight to finish, then
reset the stock store to ``total - committed`` (and each buyer's quota to what they bought).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.config import live_config, register_key
from incentive.config import service as config
from incentive.config.keys import FLASH_SALE_BUCKETS, FLASH_SALE_FLOW_CONTROL, flash_sale_flow_open
from incentive.db import Database, new_id, utcnow
from incentive.db import insert as db_insert
from incentive.errors import (
    IdempotencyConflict,
    NotFound,
    ServiceUnavailable,
    SoldOut,
    StockPoolMissing,
)
from incentive.flash_sales import metrics
from incentive.flash_sales.errors import FlashSaleError, FlowClosed, LimitExceeded, NotOnSale
from incentive.flash_sales.models import FlashSale, Purchase
from incentive.flash_sales.schemas import FlashSaleIn, ReconcileOut
from incentive.stock import StockEngine, give_back, runtime
from incentive.stock.engine import Deduction, even_split

log = logging.getLogger(__name__)

ACTIVATED = "flash_sale.activated"
FACTS_TTL_SECONDS = 1.0
MAX_COMMIT_BATCH = 500

DRAIN_SECONDS = register_key(
    "flash_sale.drain_seconds",
    Annotated[float, Field(ge=0, le=60)],
    5.0,
    "How long reconcile/rebuild wait after closing a sale's flow-control switch for requests "
    "in flight to finish (live-config propagation + one commit).",
)


def pool_of(sale_id: str) -> str:
    return f"fs:{sale_id}"


# --------------------------------------------------------------------------- lifecycle


async def create(session: AsyncSession, principal: Principal, body: FlashSaleIn) -> FlashSale:
    """A draft ``flash_sale`` campaign plus its stock description; nothing reaches the stock
    store before activation."""
    buckets = min(body.buckets or int(live_config.get(FLASH_SALE_BUCKETS)), body.total_stock)
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
    sale = FlashSale(
        campaign_id=campaign.id,
        sku=body.sku,
        item_name=body.item_name,
        price_fen=body.price_fen,
        total_stock=body.total_stock,
        per_user_limit=body.per_user_limit,
        buckets=buckets,
        starts_at=campaign.starts_at,
        ends_at=campaign.ends_at,
        created_at=utcnow(),
    )
    session.add(sale)
    await session.flush()
    return sale


async def get_sale(session: AsyncSession, sale_id: str, *, lock: bool = False) -> FlashSale:
    sale = await session.get(FlashSale, sale_id, with_for_update=lock, populate_existing=True)
    if sale is None:
        raise NotFound(f"flash sale {sale_id} does not exist", flash_sale_id=sale_id)
    return sale


async def activate(session: AsyncSession, principal: Principal, sale_id: str) -> FlashSale:
    """Move the approved campaign to active and announce it; the stock is split by the
    ``flash_sales.split_stock`` subscriber, exactly once. A second activation is a 409."""
    sale = await get_sale(session, sale_id)
    await campaigns.managed_campaign(session, principal, sale_id)
    if sale.activated_at is not None:
        raise FlashSaleError("the flash sale was already activated", flash_sale_id=sale_id)
    await campaigns.transition(session, principal, sale_id, to_status="active")
    sale.activated_at = utcnow()
    await events.publish(
        session,
        ACTIVATED,
        {"flash_sale_id": sale_id, "total": sale.total_stock, "buckets": sale.buckets},
        key=sale_id,
    )
    await session.flush()
    return sale


async def split_stock(session: AsyncSession, event: events.Event) -> None:
    """Subscriber of ``flash_sale.activated``: split the stock into buckets, once.

    Twice guarded: the engine's split is a no-op for an existing pool, and ``split_at`` is
    written in the handler's transaction (with the processed-event record).
    """
    sale = await session.get(FlashSale, str(event.payload["flash_sale_id"]), with_for_update=True)
    if sale is None or sale.split_at is not None:
        return
    await runtime.current().split(pool_of(sale.campaign_id), sale.total_stock, sale.buckets)
    sale.split_at = utcnow()


events.subscribe(ACTIVATED, "flash_sales.split_stock", split_stock)


# --------------------------------------------------------------------------- status


async def sold(session: AsyncSession, sale_id: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(Purchase.quantity), 0)).where(
            Purchase.flash_sale_id == sale_id
        )
    )
    return int(total or 0)


async def bucket_levels(engine: StockEngine, sale: FlashSale) -> list[int] | None:
    """Per-bucket units left, or None before the split or when the store lost the pool."""
    if sale.split_at is None or not await engine.exists(pool_of(sale.campaign_id)):
        return None
    return await engine.remaining(pool_of(sale.campaign_id))


# --------------------------------------------------------------------------- purchases


@dataclass(frozen=True)
class SaleFacts:
    id: str
    status: str
    split: bool
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    loaded_at: float


@dataclass(frozen=True)
class PurchaseResult:
    purchase: Purchase
    replayed: bool


class CommitOutcomeUnknown(Exception):
    """The connection broke while committing: the batch may or may not be durable."""


class PurchaseRecorder:
    """Group commit: every purchase queued while a batch is being written goes into the next
    one; each caller wakes after its batch committed (True), found its idempotency key already
    recorded (False), or failed (exception)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[bool]]] = asyncio.Queue()

    async def record(self, row: dict[str, Any]) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((row, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_COMMIT_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[tuple[dict[str, Any], asyncio.Future[bool]]]) -> None:
        metrics.BATCH_SIZE.observe(len(batch))
        committing = False
        try:
            async with self.db.unit_of_work() as session:
                stmt = (
                    db_insert(session, Purchase)
                    .values([row for row, _ in batch])
                    .on_conflict_do_nothing(
                        index_elements=["flash_sale_id", "user_id", "idempotency_key"]
                    )
                    .returning(Purchase.id)
                )
                inserted = set((await session.execute(stmt)).scalars())
                committing = True
        except BaseException as exc:
            error: BaseException = CommitOutcomeUnknown(str(exc)) if committing else exc
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for row, future in batch:
            if not future.done():
                future.set_result(row["id"] in inserted)


class Purchases:
    """The purchase path of one process: sale facts cache, in-flight duplicates, recorder."""

    def __init__(self, db: Database, engine: StockEngine) -> None:
        self.db = db
        self.engine = engine
        self.recorder = PurchaseRecorder(db)
        self._facts: dict[str, SaleFacts] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[PurchaseResult]] = {}

    async def facts(self, sale_id: str) -> SaleFacts:
        cached = self._facts.get(sale_id)
        if cached is not None and time.monotonic() - cached.loaded_at < FACTS_TTL_SECONDS:
            return cached
        async with self.db.unit_of_work() as session:
            sale = await get_sale(session, sale_id)
            campaign = await campaigns.get_campaign(session, sale_id)
            facts = SaleFacts(
                sale_id,
                campaign.status,
                sale.split_at is not None,
                sale.per_user_limit,
                sale.starts_at,
                sale.ends_at,
                time.monotonic(),
            )
        self._facts[sale_id] = facts
        return facts

    async def buy(
        self, principal: Principal, sale_id: str, quantity: int, key: str
    ) -> PurchaseResult:
        """Buy ``quantity`` units once per (sale, buyer, key); see the module docstring.

        Raises NotOnSale, FlowClosed (503), LimitExceeded, SoldOut, IdempotencyConflict (same
        key, other quantity) or ServiceUnavailable; none of them leaves stock or quota taken.
        """
        metrics.ATTEMPTS.inc()
        facts = await self.facts(sale_id)
        now = utcnow()
        if facts.status != "active" or not facts.split:
            raise NotOnSale(f"flash sale {sale_id} is {facts.status}", status=facts.status)
        if not facts.starts_at <= now < facts.ends_at:
            raise NotOnSale(
                "outside the sale window",
                starts_at=facts.starts_at.isoformat(),
                ends_at=facts.ends_at.isoformat(),
            )
        if not flash_sale_flow_open(sale_id):
            metrics.SWITCH_REJECTIONS.inc()
            raise FlowClosed("the sale is paused by flow control", retry_after=1)
        slot = (sale_id, principal.id, key)
        other = self._inflight.get(slot)
        if other is not None:  # the same request already running in this process
            return _replay(await asyncio.shield(other), quantity)
        future: asyncio.Future[PurchaseResult] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = future
        try:
            result = await self._buy(facts, principal, quantity, key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[slot]

    async def _buy(
        self, facts: SaleFacts, principal: Principal, quantity: int, key: str
    ) -> PurchaseResult:
        # No look-up of the key before the engine: a retry of a recorded purchase is rare, and
        # is caught where it surfaces (limit reached, sold out, or the insert's conflict).
        pool = pool_of(facts.id)
        try:
            reserved = await self.engine.reserve_quota(
                pool, principal.id, quantity, facts.per_user_limit
            )
        except StockPoolMissing as exc:
            raise _rebuilding(facts.id) from exc
        if not reserved:
            replay = await self._replay_of(facts.id, principal.id, key, quantity)
            if replay is not None:
                return replay
            metrics.LIMIT_HITS.inc()
            raise LimitExceeded(
                f"at most {facts.per_user_limit} per buyer", limit=facts.per_user_limit
            )
        try:
            deduction = await self.engine.deduct(pool, quantity)
        except SoldOut:
            await self.engine.release_quota(pool, principal.id, quantity)
            replay = await self._replay_of(facts.id, principal.id, key, quantity)
            if replay is not None:
                return replay
            metrics.SOLD_OUT.inc()
            raise
        except StockPoolMissing as exc:
            await self.engine.release_quota(pool, principal.id, quantity)
            raise _rebuilding(facts.id) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                await self.engine.release_quota(pool, principal.id, quantity)
            raise
        purchase = Purchase(
            id=new_id(),
            flash_sale_id=facts.id,
            user_id=principal.id,
            quantity=quantity,
            takes=[[t.bucket, t.quantity] for t in deduction.takes],
            idempotency_key=key,
            created_at=utcnow(),
        )
        try:
            inserted = await self.recorder.record(_row(purchase))
        except CommitOutcomeUnknown as exc:
            # Maybe durable: giving the stock back could oversell. Reconcile returns it.
            log.error("purchase commit outcome unknown", extra={"purchase_id": purchase.id})
            raise ServiceUnavailable("purchase outcome unknown; retry with the same key") from exc
        except BaseException:
            await self._compensate(deduction, principal.id)
            raise
        if not inserted:  # a duplicate of this key in another process was recorded first
            await self._compensate(deduction, principal.id)
            existing = await self._recorded(facts.id, principal.id, key)
            if existing is None:  # pragma: no cover - the conflicting row is committed
                raise ServiceUnavailable("purchase conflict; retry with the same key")
            return _replay(PurchaseResult(existing, True), quantity)
        metrics.SUCCESSES.inc()
        return PurchaseResult(purchase, False)

    async def _compensate(self, deduction: Deduction, user_id: str) -> None:
        metrics.COMPENSATIONS.inc()
        await give_back(self.engine, deduction)
        await self.engine.release_quota(deduction.pool, user_id, deduction.quantity)

    async def _replay_of(
        self, sale_id: str, user_id: str, key: str, quantity: int
    ) -> PurchaseResult | None:
        """A refusal for a key that already bought is a retry: the recorded purchase."""
        existing = await self._recorded(sale_id, user_id, key)
        return None if existing is None else _replay(PurchaseResult(existing, True), quantity)

    async def _recorded(self, sale_id: str, user_id: str, key: str) -> Purchase | None:
        async with self.db.unit_of_work() as session:
            return (
                await session.execute(
                    select(Purchase).where(
                        Purchase.flash_sale_id == sale_id,
                        Purchase.user_id == user_id,
                        Purchase.idempotency_key == key,
                    )
                )
            ).scalar_one_or_none()


def _row(p: Purchase) -> dict[str, Any]:
    return {
        "id": p.id,
        "flash_sale_id": p.flash_sale_id,
        "user_id": p.user_id,
        "quantity": p.quantity,
        "takes": p.takes,
        "idempotency_key": p.idempotency_key,
        "created_at": p.created_at,
    }


def _replay(result: PurchaseResult, quantity: int) -> PurchaseResult:
    if result.purchase.quantity != quantity:
        raise IdempotencyConflict(
            "Idempotency-Key was already used for another quantity", header="Idempotency-Key"
        )
    return PurchaseResult(result.purchase, True)


def _rebuilding(sale_id: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"stock of flash sale {sale_id} is missing from the stock store; an operator must "
        "run rebuild",
        retry_after=5,
    )


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
        if sale.split_at is None:
            raise NotOnSale("the stock was never split: activate the sale first")
        buckets, total = sale.buckets, sale.total_stock
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
