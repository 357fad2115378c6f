"""Participation: customers acting in a campaign on the platform itself — a coupon claimed
from the campaign's batch, a flash-sale purchase — told to the domains that watch every
campaign whatever its kind.

The activity stream (``activities``) brings what partners report; this brings what happens
here. A domain registers an observer at start (``register_observer``, idempotent by name);
the acting domain calls ``notify`` in the action's unit of work, after the action, so what an
observer writes commits or rolls back with it — set-based: a flash sale's group commit tells
a whole batch of purchases at once. An observer must be cheap when it has nothing to do
(sharing: one indexed query per call).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class Participation:
    kind: str  # what the customer did: "claim" | "purchase"
    ref: str  # the record it made (a coupon's, a purchase's id), unique per kind
    campaign_id: str
    customer: str
    occurred_at: datetime


Observer = Callable[[AsyncSession, Sequence[Participation]], Awaitable[None]]
_OBSERVERS: dict[str, Observer] = {}


def register_observer(name: str, observer: Observer) -> None:
    _OBSERVERS[name] = observer


async def notify(session: AsyncSession, done: Sequence[Participation]) -> None:
    if not done:
        return
    for observer in list(_OBSERVERS.values()):
        await observer(session, done)
