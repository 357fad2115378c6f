"""Data models in every process: the outbox events a source names as changes re-sync the
records they name (a subscriber per topic); workers deliver due records to the targets
(``data_models.deliver``) and, on the production deployment, mirror the archive in Redis
(``data_models.mirror``)."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import domains, events
from incentive.data_models import mirror, sync
from incentive.data_models.keys import DELIVER_EVERY_SECONDS
from incentive.data_models.models import DataModel
from incentive.domains import WorkerJob
from incentive.events.bus import Event
from incentive.kit.sources import get_source, source_names

SUBSCRIBER = "data_models.sync"


async def on_change(session: AsyncSession, event: Event) -> None:
    """Re-sync, for every model reading a source that names this topic, the records the event
    names (in the event's unit of work: once per event)."""
    names = [n for n in source_names() if event.topic in get_source(n).topics]
    if not names:
        return
    models = await session.scalars(select(DataModel).where(DataModel.source.in_(names)))
    for model in list(models):
        source = get_source(model.source)
        keys = source.keys_of(event.topic, event.payload)
        if keys:
            await sync.sync_rows(session, model.id, await source.by_keys(session, keys))


def _subscribe() -> None:
    domains.load()
    for topic in sorted({t for n in source_names() for t in get_source(n).topics}):
        events.subscribe(topic, SUBSCRIBER, on_change)


_subscribe()


async def _deliver(app: FastAPI) -> None:
    while (await sync.deliver_due(app.state.db))["delivered"]:
        pass  # more may be due right away


async def _mirror(app: FastAPI) -> None:
    if app.state.redis is not None:  # the production deployment keeps the archive there too
        await mirror.mirror(app.state.db, app.state.redis)


async def stop(app: FastAPI) -> None:
    await sync.close_writers()


JOBS = (
    WorkerJob("data_models.deliver", _deliver, every=DELIVER_EVERY_SECONDS),
    WorkerJob("data_models.mirror", _mirror, every=DELIVER_EVERY_SECONDS),
)
