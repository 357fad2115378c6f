"""Subscribers for event tests: they record calls and write a follow-up outbox row in the
handler's transaction, so "effect once" is checked on the database, not on a Python list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.db import Database
from incentive.events.models import OutboxEvent

EFFECT_TOPIC = "test.effect"


@dataclass
class Recorder:
    """A subscriber whose first ``fail_times`` runs raise."""

    name: str
    topic: str = "test.happened"
    fail_times: int = 0
    calls: list[events.Event] = field(default_factory=list)

    async def __call__(self, session: AsyncSession, event: events.Event) -> None:
        self.calls.append(event)
        await events.publish(session, EFFECT_TOPIC, {"of": event.id, "by": self.name})
        if len(self.calls) <= self.fail_times:
            raise RuntimeError(f"{self.name} failing on purpose")


@pytest.fixture
def subscribers() -> Iterator[list[Recorder]]:
    """Register recorders with ``add(...)``; all are unsubscribed afterwards."""
    registered: list[Recorder] = []
    yield registered
    for r in registered:
        events.unsubscribe(r.topic, r.name)


def add(registry: list[Recorder], recorder: Recorder) -> Recorder:
    events.subscribe(recorder.topic, recorder.name, recorder)
    registry.append(recorder)
    return recorder


async def effects(db: Database, by: str | None = None) -> int:
    """Committed follow-up rows written by handlers (optionally of one subscriber)."""
    async with db.unit_of_work() as s:
        rows = (
            await s.execute(select(OutboxEvent.payload).where(OutboxEvent.topic == EFFECT_TOPIC))
        ).scalars()
        return sum(1 for p in rows if by is None or p["by"] == by)


async def outbox_count(db: Database, topic: str = "test.happened") -> int:
    async with db.unit_of_work() as s:
        q = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == topic)
        return int((await s.execute(q)).scalar_one())
