"""Observers: domains that watch the activity stream without being a campaign kind.

A kind answers the activities of the campaigns it runs (``campaigns.kinds``, one outcome per
activity and campaign). Some domains only need to *see* them — sharing counts a payment as a
share's conversion. They register an observer here: ``evaluate`` calls every observer once
with the facts of the activities it evaluated (after their kinds answered, in the same unit
of work), for inline and queued evaluation alike, so an activity is observed exactly once
and what the observer writes commits or rolls back with the outcomes.

An observer must be cheap when it has nothing to do (a batch of payments with no share to
attribute): at most one indexed query per call. Register in the domain's ``runtime.start``
(idempotent by name).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns.kinds import ActivityFacts

Observer = Callable[[AsyncSession, Sequence[ActivityFacts]], Awaitable[None]]

_OBSERVERS: dict[str, Observer] = {}


def register_observer(name: str, observer: Observer) -> None:
    """Call ``observer`` with every evaluated batch of activities (replaces one of the same
    name)."""
    _OBSERVERS[name] = observer


def unregister_observer(name: str) -> None:
    _OBSERVERS.pop(name, None)


def observing() -> bool:
    return bool(_OBSERVERS)


async def notify(session: AsyncSession, activities: Sequence[ActivityFacts]) -> None:
    """Show ``activities`` to every observer, in the order they registered."""
    if not activities:
        return
    for observer in list(_OBSERVERS.values()):
        await observer(session, activities)
