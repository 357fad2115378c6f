"""Sending provider calls, exactly once in effect.

A ``ProviderCall`` row is written in the transaction that needs the call (an unlocked
coupon to issue, a redemption to confirm, an undo, a revocation), so nothing is sent for a
change that rolled back. Workers *take* due calls (a lease: ``UPDATE … WHERE id IN (SELECT
… FOR UPDATE SKIP LOCKED)`` on PostgreSQL), send them outside any transaction, and record
the answer under the same lease.

Exactly once: the request number is fixed when the row is written and never regenerated;
a call attempted before (``attempts > 0`` when taken: an unclear answer, a worker killed
mid-call) first asks the provider what it did under that number and only sends again when
the provider says it knows nothing. 5xx and timeouts are retried with back-off; a timeout
or unreadable answer makes the coupon ``unknown`` meanwhile; after the last attempt the
coupon is ``failed`` with the reason (a late webhook or reconciliation can still make it
usable: the provider is the authority on what it issued).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from incentive.config import live_config
from incentive.coupons import providers, service
from incentive.coupons.keys import (
    CALL_ATTEMPTS,
    CALL_LEASE_SECONDS,
    CALL_RETRY_BASE_SECONDS,
    CALL_RETRY_MAX_SECONDS,
    CALLS_IN_FLIGHT,
)
from incentive.coupons.metrics import PROVIDER_CALLS
from incentive.coupons.models import (
    Coupon,
    CouponBatch,
    CouponProvider,
    CouponRedemption,
    ProviderCall,
)
from incentive.coupons.provider import (
    Answer,
    Done,
    ProviderClient,
    ProviderCoupon,
    Refused,
    Unclear,
)
from incentive.db import Database, utcnow

log = logging.getLogger(__name__)

#: answers that leave us not knowing whether the provider acted
UNKNOWN_WHYS = ("timeout", "bad-answer", "read-error")


@dataclass(frozen=True)
class Taken:
    id: int
    provider_id: str
    coupon_id: str
    redemption_id: str | None
    action: str
    request_no: str
    attempts: int  # including this one


async def _any_due(db: Database) -> bool:
    now = utcnow()
    async with db.reader() as conn:
        found = await conn.scalar(
            select(ProviderCall.id)
            .where(
                or_(
                    (ProviderCall.state == "pending") & (ProviderCall.due_at <= now),
                    (ProviderCall.state == "in_flight") & (ProviderCall.leased_until <= now),
                )
            )
            .limit(1)
        )
    return found is not None


async def take(db: Database, limit: int) -> list[Taken]:
    """Lease up to ``limit`` due calls: pending ones whose time came, and in-flight ones
    whose lease ran out (their worker died or hung)."""
    now = utcnow()
    lease = timedelta(seconds=float(live_config.get(CALL_LEASE_SECONDS)))
    # A coupon's calls reach the provider in the order they were written: an undo's reversal
    # waits while the redemption it undoes is still to be sent (or retried), a revocation
    # while the issue is; otherwise the later call could overtake and be undone by the earlier.
    earlier = aliased(ProviderCall)
    open_before = (
        select(earlier.id)
        .where(
            earlier.coupon_id == ProviderCall.coupon_id,
            earlier.id < ProviderCall.id,
            earlier.state.in_(("pending", "in_flight")),
        )
        .exists()
    )
    due = (
        select(ProviderCall.id)
        .where(
            or_(
                (ProviderCall.state == "pending") & (ProviderCall.due_at <= now),
                (ProviderCall.state == "in_flight") & (ProviderCall.leased_until <= now),
            ),
            ~open_before,
            # A disabled provider is not called; its calls wait until it is enabled again.
            ProviderCall.provider_id.in_(
                select(CouponProvider.id).where(CouponProvider.state == "active")
            ),
        )
        .order_by(ProviderCall.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with db.unit_of_work() as session:
        rows = (
            await session.execute(
                update(ProviderCall)
                .where(ProviderCall.id.in_(due.scalar_subquery()))
                .values(
                    state="in_flight",
                    attempts=ProviderCall.attempts + 1,
                    leased_until=now + lease,
                )
                .returning(
                    ProviderCall.id,
                    ProviderCall.provider_id,
                    ProviderCall.coupon_id,
                    ProviderCall.redemption_id,
                    ProviderCall.action,
                    ProviderCall.request_no,
                    ProviderCall.attempts,
                )
                .execution_options(synchronize_session=False)
            )
        ).all()
    return [Taken(*r) for r in sorted(rows, key=lambda r: int(r.id))]


class Sender:
    """Sends taken calls, one client per provider, at most ``CALLS_IN_FLIGHT`` at once."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # one client per provider, replaced when the provider's settings change
        self._clients: dict[str, tuple[ProviderClient, datetime]] = {}

    async def aclose(self) -> None:
        for client, _ in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def _client(self, provider_id: str) -> ProviderClient:
        async with self.db.reader() as conn:
            provider = (
                await conn.execute(
                    select(
                        CouponProvider.base_url,
                        CouponProvider.credentials,
                        CouponProvider.updated_at,
                    ).where(CouponProvider.id == provider_id)
                )
            ).one()
        cached = self._clients.get(provider_id)
        if cached is not None and cached[1] == provider.updated_at:
            return cached[0]
        if cached is not None:
            await cached[0].aclose()
        client = providers.client_for(provider.base_url, provider.credentials)
        self._clients[provider_id] = (client, provider.updated_at)
        return client

    async def run_once(self) -> int:
        """Take and send one round of due calls; returns how many were taken."""
        if not await _any_due(self.db):
            return 0  # the usual case: no write transaction (on SQLite, no write lock) to learn it
        width = int(live_config.get(CALLS_IN_FLIGHT))
        taken = await take(self.db, width)
        if taken:
            await asyncio.gather(*(self.send(call) for call in taken))
        return len(taken)

    async def drain(self, max_rounds: int = 1000) -> None:
        """Send until nothing is due (tests, CLI)."""
        for _ in range(max_rounds):
            if not await self.run_once():
                return

    async def send(self, call: Taken) -> None:
        try:
            answer = await self._ask(await self._client(call.provider_id), call)
        except Exception as exc:  # a bug or our database: recorded, retried with back-off
            log.exception("provider call failed before an answer", extra={"call": call.id})
            answer = Unclear(f"error: {type(exc).__name__}")
        PROVIDER_CALLS.labels(call.action, type(answer).__name__.lower()).inc()
        await self._record(call, answer)

    async def _ask(self, client: ProviderClient, call: Taken) -> Answer:
        async with self.db.reader() as conn:
            coupon = (
                await conn.execute(
                    select(Coupon.customer_id, Coupon.provider_code, CouponBatch.external_id)
                    .join(CouponBatch, CouponBatch.id == Coupon.batch_id)
                    .where(Coupon.id == call.coupon_id)
                )
            ).one()
            redemption = (
                await conn.execute(
                    select(CouponRedemption.merchant_id, CouponRedemption.amount_fen).where(
                        CouponRedemption.id == call.redemption_id
                    )
                )
            ).first()
        if call.attempts > 1:  # an earlier attempt may have reached the provider: ask first
            known = await self._asked_before(client, call)
            if known is not None:
                return known
        if call.action == "issue":
            # The provider knows its batch by its own id, kept on our synced batch.
            return await client.issue(call.request_no, coupon.external_id or "", coupon.customer_id)
        if call.action == "redeem":
            assert redemption is not None
            return await client.redeem(
                call.request_no,
                coupon.provider_code or "",
                redemption.merchant_id,
                redemption.amount_fen,
            )
        if call.action == "reverse":
            return await client.reverse_redemption(
                service.request_no("redeem", call.redemption_id or "")
            )
        return await client.revoke(call.request_no, coupon.provider_code or "", "revoked")

    async def _asked_before(self, client: ProviderClient, call: Taken) -> Answer | None:
        found: ProviderCoupon | None | Unclear
        if call.action == "issue":
            found = await client.find_coupon(call.request_no)
        elif call.action == "redeem":
            found = await client.find_redemption(call.request_no)
        else:
            return None  # reversal and revocation are idempotent at the provider
        if isinstance(found, Unclear):
            return found
        return Done(found) if found is not None else None

    async def _record(self, call: Taken, answer: Answer) -> None:
        now = utcnow()
        last = call.attempts >= int(live_config.get(CALL_ATTEMPTS))
        async with self.db.unit_of_work() as session:
            # Only the holder of the lease records (another worker may have taken the call
            # over after this one's lease ran out: its answer then wins).
            mine = (
                select(ProviderCall.id)
                .where(
                    ProviderCall.id == call.id,
                    ProviderCall.state == "in_flight",
                    ProviderCall.attempts == call.attempts,
                )
                .with_for_update()
            )
            if await session.scalar(mine) is None:
                return
            if isinstance(answer, Unclear) and not last:
                await _retry(session, call, answer.why)
                return
            why = (
                answer.reason
                if isinstance(answer, Refused)
                else (answer.why if isinstance(answer, Unclear) else "")
            )
            await session.execute(
                update(ProviderCall)
                .where(ProviderCall.id == call.id)
                .values(
                    state="done" if isinstance(answer, Done) else "failed",
                    finished_at=now,
                    leased_until=None,
                    last_error=why or None,
                )
                .execution_options(synchronize_session=False)
            )
            await _settle(session, call, answer, why)


async def _retry(session: AsyncSession, call: Taken, why: str) -> None:
    base = float(live_config.get(CALL_RETRY_BASE_SECONDS))
    cap = float(live_config.get(CALL_RETRY_MAX_SECONDS))
    delay = min(cap, base * 2 ** min(call.attempts - 1, 30))
    await session.execute(
        update(ProviderCall)
        .where(ProviderCall.id == call.id)
        .values(
            state="pending",
            due_at=utcnow() + timedelta(seconds=delay),
            leased_until=None,
            last_error=why,
        )
        .execution_options(synchronize_session=False)
    )
    if call.action == "issue" and why in UNKNOWN_WHYS:
        await service.move(
            session, call.coupon_id, "activating", "unknown", service.SYSTEM, f"unclear: {why}"
        )


async def _settle(
    session: AsyncSession,
    call: Taken,
    answer: Answer,
    why: str,
) -> None:
    """What a final answer means for the coupon or the redemption."""
    if call.action == "issue":
        if isinstance(answer, Done):
            await providers.issued(
                session, call.provider_id, answer.coupon, reason="provider answered"
            )
        elif not isinstance(answer, Done):
            await providers.refused(session, call.provider_id, call.request_no, why or "failed")
        return
    if call.action in ("redeem", "reverse") and call.redemption_id is not None:
        state = {"redeem": "confirmed", "reverse": "reversed"}[call.action]
        await session.execute(
            update(CouponRedemption)
            .where(CouponRedemption.id == call.redemption_id)
            .values(provider_state=state if isinstance(answer, Done) else f"failed:{why}"[:40])
            .execution_options(synchronize_session=False)
        )
