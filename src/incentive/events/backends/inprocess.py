"""Embedded transport: the relay calls this process's subscribers directly.

An event counts as delivered only when every subscriber of its topic has handled it (or had
handled it before), so a crash or a failing handler leaves the outbox row to be retried and
nothing is lost; subscribers that already succeeded skip the retry via ``processed_events``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from incentive.db import Database
from incentive.events.bus import Event, subscriptions_for
from incentive.events.service import handle

log = logging.getLogger(__name__)


class InProcessTransport:
    name = "in-process"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def deliver(self, events: Sequence[Event]) -> dict[str, str | None]:
        outcome: dict[str, str | None] = {}
        for event in events:
            errors: list[str] = []
            for subscription in subscriptions_for(event.topic):
                try:
                    await handle(self.db, subscription, event)
                except Exception as exc:
                    log.warning(
                        "event handler failed; will retry",
                        exc_info=True,
                        extra={"subscriber": subscription.name, "event_id": event.id},
                    )
                    errors.append(f"{subscription.name}: {type(exc).__name__}: {exc}")
            outcome[event.id] = "; ".join(errors) or None
        return outcome
