"""Participation: a customer acting in a campaign on the platform itself — a coupon claimed
from the campaign's batch — told to the domains that watch every campaign whatever its kind.

The activity stream (``activities``) brings what partners report; this brings what happens
here. A domain registers an observer at start (``register_observer``, idempotent by name);
the acting domain calls ``notify`` in the action's unit of work, after the action, so what an
observer writes commits or rolls back with it. An observer must be cheap when it has
nothing to do (sharing: one primary-key read).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class Participation:
    kind: str  # what the customer did: "claim"
    ref: str  # the record it made (a coupon's id), unique per kind
    campaign_id: str
    customer: str
    occurred_at: datetime


Observer = Callable[[AsyncSession, Participation], Awaitable[None]]
_OBSERVERS: dict[str, Observer] = {}


def register_observer(name: str, observer: Observer) -> None:
    _OBSERVERS[name] = observer


async def notify(session: AsyncSession, participation: Participation) -> None:
    for observer in list(_OBSERVERS.values()):
        await observer(session, participation)
