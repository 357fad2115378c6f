"""Publishing events through the outbox, and running a subscriber's handler idempotently."""

from __future__ import annotations

import json
import weakref
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import SessionTransaction

from incentive.db import Database, new_id, utcnow
from incentive.db import insert as db_insert
from incentive.events.bus import TOPIC_PATTERN, Event, Subscription
from incentive.events.metrics import DELIVERED, DUPLICATES, HANDLER_FAILURES, PUBLISHED
from incentive.events.models import OutboxEvent, ProcessedEvent

MAX_KEY_LENGTH = 200

# Relays of this process waiting for work; a commit that wrote outbox rows wakes them.
_relay_wakers: weakref.WeakSet[Any] = weakref.WeakSet()


def add_waker(waker: Any) -> None:
    """Register an object with a ``wake()`` method to call after outbox rows are committed."""
    _relay_wakers.add(waker)


async def publish(
    session: AsyncSession, topic: str, payload: dict[str, Any], key: str | None = None
) -> str:
    """Record an event in the outbox, in the caller's transaction; returns its id.

    Nothing leaves the process before the transaction commits: a rollback discards the
    event with the change it announced. ``key`` names the entity (campaign id, file id) for
    consumers that group by it. ``payload`` must be JSON (it is stored as such).
    """
    if not TOPIC_PATTERN.match(topic) or len(topic) > 100:
        raise ValueError(f"topic {topic!r} must be dotted lower_snake_case (max 100)")
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"event key must be 1..{MAX_KEY_LENGTH} characters")
    # Fail in the publisher's transaction, not later in the relay.
    json.dumps(payload, allow_nan=False)
    row = OutboxEvent(
        event_id=new_id(),
        topic=topic,
        key=key,
        payload=payload,
        created_at=utcnow(),
        available_at=utcnow(),
        attempts=0,
    )
    session.add(row)
    _after_commit(session, topic)
    return row.event_id


def _after_commit(session: AsyncSession, topic: str) -> None:
    sync_session = session.sync_session
    pending: dict[str, Any] | None = sync_session.info.get("outbox")
    if pending is not None:
        pending["topics"].append(topic)
        return
    state: dict[str, Any] = {"topics": [topic], "active": True}
    sync_session.info["outbox"] = state

    def _committed(s: SyncSession) -> None:
        if not state["active"]:
            return
        s.info.pop("outbox", None)
        for t in state["topics"]:
            PUBLISHED.labels(t).inc()
        for waker in list(_relay_wakers):
            waker.wake()

    def _rolled_back(s: SyncSession, previous: SessionTransaction) -> None:
        # A savepoint rolling back does not discard the rows published outside it.
        if previous.nested or not state["active"]:
            return
        state["active"] = False
        s.info.pop("outbox", None)

    sa_event.listen(sync_session, "after_commit", _committed, once=True)
    sa_event.listen(sync_session, "after_soft_rollback", _rolled_back)


def event_of(row: OutboxEvent) -> Event:
    return Event(row.event_id, row.topic, row.key, dict(row.payload), row.created_at)


async def handle(db: Database, subscription: Subscription, event: Event) -> bool:
    """Run ``subscription``'s handler for ``event`` once per subscriber, ever.

    The ``processed_events`` row is inserted first in the handler's own unit of work: a
    duplicate finds it (or, concurrently on PostgreSQL, waits for it on the primary key) and
    is skipped; a handler error rolls the row back with the handler's writes so the event
    can be retried. Returns ``False`` for a skipped duplicate; re-raises handler errors.
    """
    try:
        async with db.unit_of_work() as session:
            stmt = (
                db_insert(session, ProcessedEvent)
                .values(subscriber=subscription.name, event_id=event.id, processed_at=utcnow())
                .on_conflict_do_nothing()
                .returning(ProcessedEvent.event_id)
            )
            if (await session.execute(stmt)).scalar_one_or_none() is None:
                DUPLICATES.labels(subscription.name).inc()
                return False
            await subscription.handler(session, event)
    except Exception:
        HANDLER_FAILURES.labels(subscription.name).inc()
        raise
    DELIVERED.labels(subscription.name).inc()
    return True
