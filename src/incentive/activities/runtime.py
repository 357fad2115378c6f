"""Queued activities (``Prefer: respond-async``) are evaluated by workers: the outbox event
``activities.received`` names them, and its subscriber evaluates each exactly once."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.activities import service
from incentive.events.bus import Event


async def evaluate_received(session: AsyncSession, event: Event) -> None:
    await service.evaluate_queued(session, [int(i) for i in event.payload["activity_ids"]])


events.subscribe(service.RECEIVED_TOPIC, "activities.evaluate", evaluate_received)
