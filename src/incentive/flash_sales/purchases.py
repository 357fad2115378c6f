"""The purchase hot path of a flash sale.

The purchase path holds no database transaction while it talks to the stock store:

1. facts of the sale (cached for ``FACTS_TTL_SECONDS``), window and flow-control switch;
2. the buyer's per-user quota is reserved and the stock deducted in one atomic step of the
   stock engine (one Lua script, one round trip on Redis), so neither can go past its bound
   under any concurrency, and a refusal of either changes neither;
3. the purchase is handed to the process's ``PurchaseRecorder``, which writes everything
   queued meanwhile in one transaction (group commit) and wakes each request only after
   that commit: a 201 is never sent for a purchase the database does not hold;
4. if the write definitely failed, the stock and the quota are given back; if the commit's
   outcome is unknown (connection lost while committing) nothing is given back — that stock
   stays stranded, never oversold, until ``reconcile`` returns it.

A retry under an ``Idempotency-Key`` already recorded answers the recorded purchase: the same
key running in this process waits for the first; otherwise the retry surfaces as a refused
quota, a sold-out or a conflicting insert (its deduction given back), and only then is the
key looked up — no database read on the hot path. A refusal met while the buyer has other
requests in flight (quota held beyond what the database records) waits for them, up to
``IN_FLIGHT_WAIT_SECONDS``: a concurrent duplicate in another process then answers its twin's
purchase, and a buyer under the limit is refused for the real reason (sold out). A replay is
the original 201 with ``Idempotent-Replayed: true``.

"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from incentive.auth.principal import Principal
from incentive.campaigns import participation
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.db import Database, new_id, utcnow
from incentive.db import insert as db_insert
from incentive.errors import IdempotencyConflict, NotFound, ServiceUnavailable
from incentive.flash_sales import metrics
from incentive.flash_sales.errors import FlowClosed, LimitExceeded, NotOnSale
from incentive.flash_sales.keys import flash_sale_flow_open
from incentive.flash_sales.kind import pool_of, sale_rules
from incentive.flash_sales.models import FlashSale, Purchase
from incentive.stock import StockEngine, give_back
from incentive.stock.engine import Deduction
from incentive.stock.errors import SoldOut, StockPoolMissing

log = logging.getLogger(__name__)

FACTS_TTL_SECONDS = 1.0
MAX_COMMIT_BATCH = 500
# A refusal while the buyer has requests in flight waits for them this long at most (a group
# commit takes milliseconds; a quota held longer is stranded until reconcile).
IN_FLIGHT_WAIT_SECONDS = 2.0
IN_FLIGHT_POLL_SECONDS = 0.02
# The clock of the facts cache (a test moves it to expire the facts).
facts_clock = time.monotonic


@dataclass(frozen=True)
class SaleFacts:
    id: str
    campaign: CampaignFacts
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
                inserted = await _insert_new(session, [row for row, _ in batch])
                await participation.notify(
                    session,
                    [
                        participation.Participation(
                            "purchase", r["id"], r["flash_sale_id"], r["user_id"], r["created_at"]
                        )
                        for r, _ in batch
                        if r["id"] in inserted
                    ],
                )
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


_COLUMNS = ("id", "flash_sale_id", "user_id", "quantity", "takes", "idempotency_key", "created_at")
# PostgreSQL: one statement of constant shape whatever the batch size (prepared once per
# connection, nothing compiled per batch): one array per column, unnested into rows.
_INSERT_UNNEST = text(
    f"INSERT INTO {Purchase.__tablename__} ({', '.join(_COLUMNS)}) "
    "SELECT id, flash_sale_id, user_id, quantity, takes::json, idempotency_key, created_at "
    "FROM unnest(CAST(:id AS varchar[]), CAST(:flash_sale_id AS varchar[]), "
    "CAST(:user_id AS varchar[]), CAST(:quantity AS bigint[]), CAST(:takes AS text[]), "
    "CAST(:idempotency_key AS varchar[]), CAST(:created_at AS timestamptz[])) "
    f"AS t({', '.join(_COLUMNS)}) "
    "ON CONFLICT (flash_sale_id, user_id, idempotency_key) DO NOTHING RETURNING id"
)


async def _insert_new(session: AsyncSession, rows: list[dict[str, Any]]) -> set[str]:
    """Insert ``rows`` in one set-based statement; the ids of those inserted (a row whose
    (sale, buyer, key) is already recorded is skipped)."""
    if session.get_bind().dialect.name == "postgresql":
        columns: dict[str, list[Any]] = {c: [row[c] for row in rows] for c in _COLUMNS}
        columns["takes"] = [json.dumps(t) for t in columns["takes"]]
        return set((await session.execute(_INSERT_UNNEST, columns)).scalars())
    stmt = (
        db_insert(session, Purchase)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["flash_sale_id", "user_id", "idempotency_key"])
        .returning(Purchase.id)
    )
    return set((await session.execute(stmt)).scalars())


class Purchases:
    """The purchase path of one process: sale facts cache, in-flight duplicates, recorder."""

    def __init__(self, db: Database, engine: StockEngine) -> None:
        self.db = db
        self.engine = engine
        self.recorder = PurchaseRecorder(db)
        self._facts: dict[str, SaleFacts] = {}
        self._refreshing: dict[str, asyncio.Future[SaleFacts]] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[PurchaseResult]] = {}

    async def facts(self, sale_id: str) -> SaleFacts:
        """The sale's facts, at most ``FACTS_TTL_SECONDS`` old. Refreshed single-flight: when
        they expire, the first request starts the one query and every request arriving
        before it answers waits for that result (never a query each)."""
        cached = self._facts.get(sale_id)
        if cached is not None and facts_clock() - cached.loaded_at < FACTS_TTL_SECONDS:
            return cached
        refresh = self._refreshing.get(sale_id)
        if refresh is None:
            # A task of its own: a waiter that gives up does not cancel it for the others.
            refresh = asyncio.ensure_future(self._load_facts(sale_id))
            self._refreshing[sale_id] = refresh
            refresh.add_done_callback(lambda done: self._refreshed(sale_id, done))
        return await asyncio.shield(refresh)

    def _refreshed(self, sale_id: str, done: asyncio.Future[SaleFacts]) -> None:
        del self._refreshing[sale_id]
        if not done.cancelled() and done.exception() is None:
            self._facts[sale_id] = done.result()

    async def _load_facts(self, sale_id: str) -> SaleFacts:
        async with self.db.unit_of_work() as session:
            sale = await session.get(FlashSale, sale_id)
            if sale is None:
                raise _not_found(sale_id)
            campaign = await campaigns.campaign_facts(session, sale_id)
            return SaleFacts(
                sale_id,
                campaign,
                campaign.status,
                sale.split_at is not None,
                sale_rules(campaign).per_user_limit,
                campaign.starts_at,
                campaign.ends_at,
                facts_clock(),
            )

    async def buy(
        self, principal: Principal, sale_id: str, quantity: int, key: str
    ) -> PurchaseResult:
        """Buy ``quantity`` units once per (sale, buyer, key); see the module docstring.

        Raises NotFound (also for a sale the buyer may not see: visibility is checked before
        the sale's state), NotOnSale, FlowClosed (503), LimitExceeded, SoldOut,
        IdempotencyConflict (same key, other quantity) or ServiceUnavailable; none of them
        leaves stock or quota taken, except a commit whose outcome is unknown (see above).
        """
        metrics.ATTEMPTS.inc()
        facts = await self.facts(sale_id)
        if not campaigns.can_see(principal, facts.campaign):
            raise _not_found(sale_id)
        now = utcnow()
        if facts.status != "active" or not facts.split:
            raise NotOnSale(f"flash sale {sale_id} is {facts.status}", campaign_status=facts.status)
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
        """One attempt; again while the refusal may come from the buyer's own requests in
        flight (in any process), so that a duplicate gets its twin's answer and a buyer under
        the limit is not told otherwise. Only refusals ever wait."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT_SECONDS
        while True:
            try:
                return await self._attempt(facts, principal, quantity, key)
            except _InFlight as busy:
                replay = await self._await_in_flight(
                    facts.id, principal.id, key, quantity, deadline
                )
                if replay is not None:
                    return replay
                if not busy.retry or time.monotonic() >= deadline:
                    raise await busy.refusal() from None

    async def _attempt(
        self, facts: SaleFacts, principal: Principal, quantity: int, key: str
    ) -> PurchaseResult:
        # No look-up of the key before the engine: a retry of a recorded purchase is rare, and
        # is caught where it surfaces (limit reached, sold out, or the insert's conflict).
        pool = pool_of(facts.id)
        limit = facts.per_user_limit
        try:
            # The quota and the stock in one atomic step: both taken, or neither.
            deduction = await self.engine.take_within_quota(pool, principal.id, quantity, limit)
        except SoldOut:
            replay, committed = await self._lookup(facts.id, principal.id, key, quantity)
            if replay is not None:
                return replay

            async def gone() -> Exception:
                metrics.SOLD_OUT.inc()
                return _sold_out(pool, quantity)

            # Another request of this buyer is in flight: it may be this one's twin, which
            # took the last units; its answer is this one's too.
            if await self.engine.quota_used(pool, principal.id) > committed:
                raise _InFlight(gone, retry=False) from None
            raise await gone() from None
        except StockPoolMissing as exc:
            raise _rebuilding(facts.id) from exc
        if deduction is None:  # the quota refused: nothing was taken
            replay, committed = await self._lookup(facts.id, principal.id, key, quantity)
            if replay is not None:
                return replay

            async def refused() -> Exception:
                # Past the wait, a quota still held by requests in flight means nothing when
                # the stock is gone: the answer is then sold-out, not limit-exceeded.
                if sum(await self.engine.remaining(pool)) < quantity:
                    metrics.SOLD_OUT.inc()
                    return _sold_out(pool, quantity)
                metrics.LIMIT_HITS.inc()
                return LimitExceeded(f"at most {limit} per buyer", limit=limit)

            if committed + quantity <= limit:  # the quota is held by requests in flight
                raise _InFlight(refused, retry=True)
            raise await refused()
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
        except Exception as exc:
            # The write definitely failed (nothing committed): give the stock back, once.
            await self._compensate(deduction, principal.id)
            log.error("purchase not recorded", extra={"purchase_id": purchase.id})
            raise ServiceUnavailable(
                "the purchase could not be recorded; nothing was bought, retry", retry_after=1
            ) from exc
        except BaseException:
            await self._compensate(deduction, principal.id)
            raise
        if not inserted:  # a duplicate of this key in another process was recorded first
            await self._compensate(deduction, principal.id)
            replay, _ = await self._lookup(facts.id, principal.id, key, quantity)
            if replay is None:  # pragma: no cover - the conflicting row is committed
                raise ServiceUnavailable("purchase conflict; retry with the same key")
            return replay
        metrics.SUCCESSES.inc()
        return PurchaseResult(purchase, False)

    async def _compensate(self, deduction: Deduction, user_id: str) -> None:
        metrics.COMPENSATIONS.inc()
        await give_back(self.engine, deduction)
        await self.engine.release_quota(deduction.pool, user_id, deduction.quantity)

    async def _lookup(
        self, sale_id: str, user_id: str, key: str, quantity: int
    ) -> tuple[PurchaseResult | None, int]:
        """For a refusal, in one statement: the purchase recorded under ``key`` (a refusal for
        a key that already bought is a retry: its replay) and the units the buyer bought."""
        async with self.db.unit_of_work() as session:
            bought = aliased(Purchase)
            committed = (
                select(func.coalesce(func.sum(bought.quantity), 0))
                .where(bought.flash_sale_id == sale_id, bought.user_id == user_id)
                .scalar_subquery()
            )
            row = (
                await session.execute(
                    select(committed, Purchase)
                    .select_from(select(literal(1)).subquery())
                    .outerjoin(
                        Purchase,
                        and_(
                            Purchase.flash_sale_id == sale_id,
                            Purchase.user_id == user_id,
                            Purchase.idempotency_key == key,
                        ),
                    )
                )
            ).one()
        existing: Purchase | None = row[1]
        replay = None if existing is None else _replay(PurchaseResult(existing, True), quantity)
        return replay, int(row[0])

    async def _await_in_flight(
        self, sale_id: str, user_id: str, key: str, quantity: int, deadline: float
    ) -> PurchaseResult | None:
        """Wait until the buyer's requests in flight are settled (their quota is released or
        recorded) or ``key`` is recorded (its replay is returned), until ``deadline``."""
        pool = pool_of(sale_id)
        while time.monotonic() < deadline:
            await asyncio.sleep(IN_FLIGHT_POLL_SECONDS)
            replay, committed = await self._lookup(sale_id, user_id, key, quantity)
            if replay is not None:
                return replay
            if await self.engine.quota_used(pool, user_id) <= committed:
                return None
        return None


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


class _InFlight(Exception):
    """A refusal that requests of the same buyer still in flight may explain: wait for them,
    then answer ``refusal()`` (or, with ``retry``, try once more)."""

    def __init__(self, refusal: Callable[[], Awaitable[Exception]], *, retry: bool) -> None:
        super().__init__("refused while the buyer has requests in flight")
        self.refusal = refusal
        self.retry = retry


def _sold_out(pool: str, quantity: int) -> SoldOut:
    return SoldOut(f"stock pool {pool!r} cannot serve {quantity}", pool=pool, requested=quantity)


def _not_found(sale_id: str) -> NotFound:
    return NotFound(f"flash sale {sale_id} does not exist", flash_sale_id=sale_id)


def _rebuilding(sale_id: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"stock of flash sale {sale_id} is missing from the stock store; an operator must "
        "run rebuild",
        retry_after=5,
    )
