"""The outbox relay: hands committed outbox events to the transport, at least once.

Any number of relays may run (one per API or worker process). Each pass *claims* a batch in
a short transaction: ``UPDATE outbox SET available_at = now + lease ... WHERE id IN (SELECT
... FOR UPDATE SKIP LOCKED)`` on PostgreSQL, so concurrent relays never take the same rows;
on SQLite the write lock serialises claims. The batch is delivered *outside* any
transaction, then marked published (or rescheduled with exponential back-off) in a second
short transaction. A relay that dies mid-batch leaves its rows to reappear when the lease
runs out: they are delivered again, which idempotent subscribers absorb.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from incentive.config import live_config
from incentive.db import Database, utcnow
from incentive.events.backends import Transport
from incentive.events.bus import Event
from incentive.events.keys import (
    CLAIM_LEASE_SECONDS,
    OUTBOX_RETENTION_HOURS,
    PROCESSED_RETENTION_DAYS,
    RELAY_BATCH_SIZE,
    RELAY_POLL_SECONDS,
    RETRY_BASE_SECONDS,
    RETRY_MAX_SECONDS,
)
from incentive.events.metrics import OUTBOX_LAG, OUTBOX_PENDING, RELAY_FAILURES, RELAYED
from incentive.events.models import OutboxEvent, ProcessedEvent
from incentive.events.service import add_waker

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000
HOUSEKEEPING_SECONDS = 600.0


class Relay:
    """Moves committed outbox rows to ``transport``. Settings default to live config."""

    def __init__(
        self,
        db: Database,
        transport: Transport,
        *,
        batch_size: int | None = None,
        lease_seconds: float | None = None,
        retry_base_seconds: float | None = None,
        retry_max_seconds: float | None = None,
    ) -> None:
        self.db = db
        self.transport = transport
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._wake = asyncio.Event()
        add_waker(self)

    def wake(self) -> None:
        """Called after a local commit wrote outbox rows: skip the rest of the poll wait."""
        self._wake.set()

    def _setting(self, override: Any, key: Any) -> Any:
        return live_config.get(key) if override is None else override

    def backoff(self, attempts: int) -> float:
        base = float(self._setting(self._retry_base, RETRY_BASE_SECONDS))
        cap = float(self._setting(self._retry_max, RETRY_MAX_SECONDS))
        return float(min(cap, base * 2 ** min(max(attempts - 1, 0), 30)))

    async def claim(self) -> list[tuple[Event, int]]:
        """Reserve up to a batch of due events for this relay; returns (event, attempts)."""
        now = utcnow()
        lease = timedelta(seconds=float(self._setting(self._lease_seconds, CLAIM_LEASE_SECONDS)))
        limit = int(self._setting(self._batch_size, RELAY_BATCH_SIZE))
        due = (
            select(OutboxEvent.id)
            .where(OutboxEvent.published_at.is_(None), OutboxEvent.available_at <= now)
            .order_by(OutboxEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(due.scalar_subquery()))
            .values(available_at=now + lease, attempts=OutboxEvent.attempts + 1)
            .returning(
                OutboxEvent.id,
                OutboxEvent.event_id,
                OutboxEvent.topic,
                OutboxEvent.key,
                OutboxEvent.payload,
                OutboxEvent.created_at,
                OutboxEvent.attempts,
            )
            .execution_options(synchronize_session=False)
        )
        async with self.db.unit_of_work() as session:
            rows = sorted((await session.execute(stmt)).all(), key=lambda r: int(r.id))
        return [
            (Event(r.event_id, r.topic, r.key, dict(r.payload), r.created_at), r.attempts)
            for r in rows
        ]

    async def run_once(self) -> int:
        """One pass: claim, deliver, record. Returns how many events were delivered."""
        claimed = await self.claim()
        if not claimed:
            return 0
        events = [e for e, _ in claimed]
        try:
            outcome = await self.transport.deliver(events)
        except Exception as exc:
            log.warning("event transport failed; batch will be retried", exc_info=True)
            outcome = {e.id: f"{type(exc).__name__}: {exc}" for e in events}
        now = utcnow()
        done = [e.id for e in events if outcome.get(e.id, "not delivered") is None]
        async with self.db.unit_of_work() as session:
            if done:
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.event_id.in_(done))
                    .values(published_at=now, last_error=None)
                    .execution_options(synchronize_session=False)
                )
            for event, attempts in claimed:
                error = outcome.get(event.id, "not delivered")
                if error is None:
                    continue
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.event_id == event.id, OutboxEvent.published_at.is_(None))
                    .values(
                        available_at=now + timedelta(seconds=self.backoff(attempts)),
                        last_error=error[:MAX_ERROR_LENGTH],
                    )
                    .execution_options(synchronize_session=False)
                )
        tally = Tally(e.topic for e in events if e.id in set(done))
        for topic, n in tally.items():
            RELAYED.labels(topic).inc(n)
        for event in events:
            if event.id not in done:
                RELAY_FAILURES.labels(event.topic).inc()
        return len(done)

    async def drain(self, max_passes: int = 1000) -> int:
        """Relay until nothing is due (tests, CLI); returns events delivered."""
        total = 0
        for _ in range(max_passes):
            n = await self.run_once()
            total += n
            if n == 0:
                return total
        return total

    async def measure_lag(self) -> tuple[int, float]:
        """Unpublished events and the age in seconds of the oldest; also sets the gauges."""
        async with self.db.unit_of_work() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(OutboxEvent.created_at)).where(
                        OutboxEvent.published_at.is_(None)
                    )
                )
            ).one()
        lag = 0.0
        if isinstance(oldest, datetime):
            oldest_at = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            lag = max(0.0, (utcnow() - oldest_at).total_seconds())
        OUTBOX_PENDING.set(count)
        OUTBOX_LAG.set(lag)
        return int(count), lag

    async def purge(self) -> None:
        """Delete published outbox rows and old redelivery guards past their retention."""
        now = utcnow()
        outbox_cutoff = now - timedelta(hours=int(live_config.get(OUTBOX_RETENTION_HOURS)))
        processed_cutoff = now - timedelta(days=int(live_config.get(PROCESSED_RETENTION_DAYS)))
        async with self.db.unit_of_work() as session:
            await session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.published_at.is_not(None), OutboxEvent.published_at < outbox_cutoff
                )
            )
            await session.execute(
                delete(ProcessedEvent).where(ProcessedEvent.processed_at < processed_cutoff)
            )

    async def run(self) -> None:
        """Relay until cancelled; survives database and transport outages."""
        loop = asyncio.get_running_loop()
        next_lag = 0.0
        next_housekeeping = loop.time() + HOUSEKEEPING_SECONDS
        while True:
            busy = False
            try:
                busy = await self.run_once() > 0
                if loop.time() >= next_lag:
                    await self.measure_lag()
                    next_lag = loop.time() + 1.0
                if loop.time() >= next_housekeeping:
                    await self.purge()
                    next_housekeeping = loop.time() + HOUSEKEEPING_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay pass failed; retrying", exc_info=True)
            if busy:
                continue
            try:
                await asyncio.wait_for(
                    self._wake.wait(), float(live_config.get(RELAY_POLL_SECONDS))
                )
            except TimeoutError:
                pass
            self._wake.clear()
