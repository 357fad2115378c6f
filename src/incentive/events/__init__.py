"""Domain events through a transactional outbox, delivered at least once, handled once.

Publishing (inside the unit of work that makes the change)::

    from incentive import events
    await events.publish(session, "campaign.activated", {"campaign_id": c.id}, key=c.id)

Subscribing (at import time of a module every process loads, e.g. your domain's api.py)::

    async def on_activated(session: AsyncSession, event: events.Event) -> None: ...
    events.subscribe("campaign.activated", "flash_sales.split_stock", on_activated)

Embedded default: the relay calls subscribers in-process. With Redis: one stream per topic,
one consumer group per subscriber name, acknowledged after the handler commits.
"""

from incentive.events.bus import Event, Handler, Subscription, subscribe, unsubscribe
from incentive.events.service import publish

__all__ = ["Event", "Handler", "Subscription", "publish", "subscribe", "unsubscribe"]
