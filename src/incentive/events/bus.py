"""Subscriptions: who handles which topic. Register at import time, in every process.

A subscription is ``(topic, name)``; ``name`` identifies the subscriber durably (its Redis
consumer group, its rows in ``processed_events``), so never rename one that is in use.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Event:
    """A committed domain event as a subscriber sees it."""

    id: str
    topic: str
    key: str | None
    payload: dict[str, Any]
    occurred_at: datetime


Handler = Callable[[AsyncSession, Event], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    topic: str
    name: str
    handler: Handler


_subscriptions: dict[tuple[str, str], Subscription] = {}


def subscribe(topic: str, name: str, handler: Handler) -> Subscription:
    """Have ``handler(session, event)`` called for every event committed on ``topic``.

    Delivery is at least once; the handler runs inside its own unit of work together with
    the insert into ``processed_events``, so its database effects happen exactly once per
    subscriber even when the event is delivered again. Raising rolls everything back and the
    event is retried later. Effects outside the database must be idempotent by ``event.id``.
    Registering the same (topic, name, handler) again is a no-op.
    """
    if not TOPIC_PATTERN.match(topic) or len(topic) > 100:
        raise ValueError(f"topic {topic!r} must be dotted lower_snake_case (max 100)")
    if not NAME_PATTERN.match(name):
        raise ValueError(f"subscriber name {name!r} must match {NAME_PATTERN.pattern}")
    existing = _subscriptions.get((topic, name))
    if existing is not None:
        if existing.handler is handler:
            return existing
        raise ValueError(f"subscriber {name!r} is already registered on {topic!r}")
    subscription = Subscription(topic, name, handler)
    _subscriptions[(topic, name)] = subscription
    return subscription


def unsubscribe(topic: str, name: str) -> None:
    _subscriptions.pop((topic, name), None)


def subscriptions_for(topic: str) -> list[Subscription]:
    return [s for (t, _), s in sorted(_subscriptions.items()) if t == topic]


def all_subscriptions() -> list[Subscription]:
    return [s for _, s in sorted(_subscriptions.items())]
