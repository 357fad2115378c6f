"""The archive's mirror in Redis on the production deployment (the database stays the
durable copy)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, literal, select, tuple_

from incentive.data_models.models import ArchivedRecord
from incentive.db import Database

#: the archive's mirror in Redis (production deployment): a hash per model version, field =
#: record key, value = the canonical JSON; the watermark says how far it is copied
MIRROR = "incentive:data-models:{model}:{version}"
MIRROR_MARK = "incentive:data-models:mirrored"
MIRROR_PAGE = 1000
MIRROR_SLACK = timedelta(minutes=1)


async def mirror(db: Database, redis: Any) -> int:
    """Copy the archive rows written since the last copy (less ``MIRROR_SLACK``: a
    transaction that committed late with an earlier time) into Redis; how many. The database
    stays the durable copy: a Redis that restarted empty lost the watermark too, so all of it
    is copied again."""
    raw = await redis.get(MIRROR_MARK)
    since = datetime.fromisoformat(raw.decode()) - MIRROR_SLACK if raw else None
    a = cast(Table, ArchivedRecord.__table__).c
    order = (a.archived_at, a.model_id, a.version, a.record_key)
    after: tuple[Any, ...] | None = None
    copied = 0
    while True:
        stmt = select(*order, a.document).order_by(*order).limit(MIRROR_PAGE)
        if since is not None:
            stmt = stmt.where(a.archived_at >= since)
        if after is not None:
            stmt = stmt.where(tuple_(*order) > tuple_(*(literal(v) for v in after)))
        async with db.reader() as connection:
            rows = (await connection.execute(stmt)).all()
        if not rows:
            return copied
        async with redis.pipeline(transaction=False) as pipe:
            for _, model_id, version, record_key, document in rows:
                pipe.hset(MIRROR.format(model=model_id, version=version), record_key, document)
            pipe.set(MIRROR_MARK, rows[-1][0].isoformat())
            await pipe.execute()
        copied += len(rows)
        after = tuple(rows[-1][:4])
