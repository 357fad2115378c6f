"""Records a sync could not assemble: one row per (model, version, key) with the failing
field, the rule and why, written by the hand-off and cleared when the record assembles."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.data_models.chain import Work
from incentive.data_models.models import AssemblyFailure
from incentive.db import insert as db_insert
from incentive.db import one_of, utcnow
from incentive.kit.pagination import KeyId, KeyInt, Keyset, Slice


async def record(session: AsyncSession, work: Work) -> None:
    failures = cast(Table, AssemblyFailure.__table__)
    assembled = [r.key for r in work.records]
    if assembled:
        await session.execute(
            delete(AssemblyFailure).where(
                AssemblyFailure.model_id == work.model_id,
                AssemblyFailure.version == work.version,
                one_of(session, AssemblyFailure.record_key, assembled),
            )
        )
    if not work.failures:
        return
    stmt = db_insert(session.get_bind().dialect.name, failures)
    stmt = stmt.on_conflict_do_update(
        index_elements=["model_id", "version", "record_key"],
        set_={c: stmt.excluded[c] for c in ("field", "rule", "detail", "failed_at")},
    )
    now = utcnow()
    rows = [
        {
            "model_id": work.model_id,
            "version": work.version,
            "record_key": f.key,
            "field": f.field[:64],
            "rule": f.rule[:32],
            "detail": f.detail[:500],
            "failed_at": now,
        }
        for f in work.failures
    ]
    await session.execute(stmt, rows)


ORDER = Keyset((AssemblyFailure.version, AssemblyFailure.record_key), tuple[KeyInt, KeyId], False)


async def listing(
    session: AsyncSession, model_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[AssemblyFailure]:
    """The records of the model's versions that could not be assembled, by version and key."""
    stmt = select(AssemblyFailure).where(AssemblyFailure.model_id == model_id)
    return await ORDER.fetch(session, stmt, cursor=cursor, limit=limit)
