"""Syncing a model's archived records to its targets, at least once, exactly once in effect.

Contract:

- A **target** is registered per model (a name, the target ``system`` whose fields it
  receives, the store's ``config``: ``targets.TargetConfig``); audited.
- **Hand-off** (the last handler of a syncing chain): each record the archive wrote goes into
  the **delivery ledger** of every enabled target of its system as ``pending`` (one row per
  (target, record): the hash wanted there). A record that changes before it was delivered
  just wants the newer hash (once the worker writing the older one, if any, is done).
- **Delivery** (the ``data_models.deliver`` worker job, or ``deliver_due``): up to ``CLAIM``
  due pending rows a round are claimed with a lease (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL, one ``UPDATE … FROM`` statement), grouped per target,
  their archived documents written with the target's writer (an upsert on the key), then
  marked ``delivered`` — only if the hash they wanted is still the one claimed. A writer that
  fails for now (``TargetUnavailable``, or anything unexpected) schedules the next attempt
  1, 2, 4, 8 … minutes later (at most 60) until ``data_models.delivery_attempts`` attempts,
  then the row is ``dead``; a refusal (``TargetRefused``) makes it ``dead`` at once (a write of
  several refused: each row is written alone, so only the refused die). A worker
  killed mid-write leaves its rows leased: after the lease they are claimed again and written
  again, which the upsert makes harmless.
- **Dead letters** are listed per model and **replayed** (back to ``pending``, attempts 0).
  A target can be **rebuilt** from the archive: every archived record of the model's current
  version is wanted there again.
- Nothing here commits except ``deliver_due``, a worker entry point (one transaction to claim,
  one to record the outcomes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

from pydantic import SecretStr, TypeAdapter, ValidationError
from sqlalchemy import Table, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.principal import Principal
from incentive.config import live_config
from incentive.data_models import failures
from incentive.data_models.chain import Work, archived
from incentive.data_models.errors import DataModelNotFound
from incentive.data_models.keys import DELIVERY_ATTEMPTS, DELIVERY_LEASE_SECONDS
from incentive.data_models.models import ArchivedRecord, DataTarget, Delivery
from incentive.data_models.outcomes import CHANGED_MEANWHILE, OUTCOMES
from incentive.data_models.records import TargetRefused, TargetRow, TargetWriter
from incentive.data_models.targets import TargetConfig, TargetUnavailable, writer_for
from incentive.db import Database, new_id, one_of, utcnow
from incentive.db import insert as db_insert
from incentive.errors import InvalidField
from incentive.kit.pagination import KeyId, Keyset, Slice
from incentive.kit.sources import get_source

log = logging.getLogger(__name__)
CLAIM = 1000
MAX_BACKOFF_MINUTES = 60
_DELIVERIES = cast(Table, Delivery.__table__)
DEAD_ORDER = Keyset((Delivery.target_id, Delivery.record_key), tuple[KeyId, KeyId], False)


def stored(config: Any) -> dict[str, Any]:
    """A target config as kept in the database (secrets in the clear: the table is ours)."""
    dumped: dict[str, Any] = config.model_dump(mode="python")
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in dumped.items()}


_CONFIG: TypeAdapter[Any] = TypeAdapter(TargetConfig)


def config_of(target: DataTarget) -> Any:
    return _CONFIG.validate_python(target.config)


async def add_target(
    session: AsyncSession,
    principal: Principal | None,
    model_id: str,
    *,
    name: str,
    system: str,
    systems: Sequence[str],
    config: Any,
) -> DataTarget:
    if system not in systems:
        raise InvalidField(
            "system", "model-system", f"system: the model's fields name {', '.join(systems)}"
        )
    now = utcnow()
    target = DataTarget(
        id=new_id(),
        model_id=model_id,
        name=name,
        system=system,
        config=stored(config),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    session.add(target)
    await session.flush()
    await record_audit(
        session,
        principal,
        "data_model.target.add",
        f"{model_id}/{name}",
        {"system": system, "where": config.redacted()},
    )
    return target


async def targets_of(session: AsyncSession, model_id: str) -> list[DataTarget]:
    found = await session.scalars(
        select(DataTarget).where(DataTarget.model_id == model_id).order_by(DataTarget.name)
    )
    return list(found)


async def target_named(session: AsyncSession, model_id: str, name: str) -> DataTarget:
    found = await session.scalar(
        select(DataTarget).where(DataTarget.model_id == model_id, DataTarget.name == name)
    )
    if found is None:
        raise DataModelNotFound(f"data model {model_id!r} has no target {name!r}")
    return found


def _want(rows: list[dict[str, Any]], session: AsyncSession) -> Any:
    stmt = db_insert(session.get_bind().dialect.name, _DELIVERIES)
    held = _DELIVERIES.c
    # A pending row due later is leased (a worker writes its older hash, which could land
    # last beside a second worker's newer one) or backs off: it keeps its time (see _record).
    later = (held.state == "pending") & (held.next_attempt_at > stmt.excluded.next_attempt_at)
    return stmt.on_conflict_do_update(
        index_elements=["target_id", "record_key"],
        set_={
            "model_id": stmt.excluded.model_id,
            "version": stmt.excluded.version,
            "hash": stmt.excluded.hash,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": case(
                (later, held.next_attempt_at), else_=stmt.excluded.next_attempt_at
            ),
            "last_error": None,
            "updated_at": stmt.excluded.updated_at,
        },
    )


async def want(
    session: AsyncSession,
    targets: Sequence[DataTarget],
    model_id: str,
    records: Sequence[tuple[str, int, str, Mapping[str, Any]]],
) -> int:
    """Put ``records`` (key, version, hash, systems) into each target's ledger as pending
    (for the targets whose system they have); how many rows."""
    now = utcnow()
    rows = [
        {
            "target_id": t.id,
            "record_key": key,
            "model_id": model_id,
            "version": version,
            "hash": digest,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "updated_at": now,
        }
        for key, version, digest, systems in records
        for t in targets
        if t.enabled and t.system in systems
    ]
    if rows:
        await session.execute(_want(rows, session), rows)
    return len(rows)


class HandOff:
    """The chain's hand-off: the records the archive wrote become pending deliveries. With
    ``every`` (a backfill of one target), every record the target does not hold yet as it
    is now: one archived before the target was registered has not changed, but is wanted.
    The records that failed are recorded (field, rule, why), those that assembled cleared."""

    name: ClassVar[str] = "hand_off"

    def __init__(self, targets: Sequence[DataTarget], *, every: bool = False) -> None:
        self.targets = targets
        self.every = every

    async def __call__(self, session: AsyncSession, work: Work) -> None:
        await failures.record(session, work)
        keep = set(work.changed)
        records = [
            (r.key, r.version, r.hash, r.systems)
            for r in work.records
            if self.every or r.key in keep
        ]
        if not self.every:
            await want(session, self.targets, work.model_id, records)
            return
        for target in self.targets:
            held = await _held(session, target, [r[0] for r in records])
            fresh = [r for r in records if held.get(r[0]) != r[2]]
            await want(session, [target], work.model_id, fresh)


async def _held(session: AsyncSession, target: DataTarget, keys: Sequence[str]) -> dict[str, str]:
    """The hash each of ``keys`` was delivered with to ``target`` and still is."""
    rows = await session.execute(
        select(Delivery.record_key, Delivery.hash).where(
            Delivery.target_id == target.id,
            Delivery.state == "delivered",
            one_of(session, Delivery.record_key, list(keys)),
        )
    )
    return dict(rows.all())


# --------------------------------------------------------------------------- delivery


_writers: dict[tuple[str, datetime], TargetWriter] = {}


def _writer(target: DataTarget) -> TargetWriter:
    key = (target.id, target.updated_at)
    if key not in _writers:
        try:
            config = config_of(target)
        except ValidationError as exc:  # stored before a check it fails was added
            raise TargetRefused(f"config not valid now: {exc.errors()[0]['msg']}") from None
        _writers[key] = writer_for(config)
    return _writers[key]


async def close_writers() -> None:
    while _writers:
        _, writer = _writers.popitem()
        try:
            await writer.close()
        except Exception:
            log.warning("a data-model target writer did not close", exc_info=True)


async def _claim(session: AsyncSession, now: datetime) -> list[Delivery]:
    """Lease up to ``CLAIM`` due rows in one statement (an ``UPDATE … FROM`` the locked due
    rows: one round trip, a join on the key rather than a list of 2 x ``CLAIM`` parameters)."""
    lease = timedelta(seconds=live_config.get(DELIVERY_LEASE_SECONDS))
    due = (
        select(Delivery.target_id, Delivery.record_key)
        .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at)
        .limit(CLAIM)
        .with_for_update(skip_locked=True)
        .subquery("due")
    )
    claimed = await session.scalars(
        update(Delivery)
        .where(Delivery.target_id == due.c.target_id, Delivery.record_key == due.c.record_key)
        .values(next_attempt_at=now + lease)
        .returning(Delivery)
        .execution_options(synchronize_session=False)
    )
    return list(claimed)


def _backoff(attempts: int) -> timedelta:
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), MAX_BACKOFF_MINUTES))


async def _documents(session: AsyncSession, claimed: Sequence[Delivery]) -> dict[Any, str]:
    wanted = {(d.model_id, d.version, d.record_key) for d in claimed}
    found: dict[Any, str] = {}
    for model_id, version in {(m, v) for m, v, _ in wanted}:
        keys = [k for m, v, k in wanted if (m, v) == (model_id, version)]
        rows = await archived(session, model_id, version, keys, ArchivedRecord.document)
        found.update({(model_id, version, k): doc for k, doc in rows})
    return found


async def deliver_due(db: Database, now: datetime | None = None) -> dict[str, int]:
    """One round of delivery (see the contract): counts of delivered, retried and dead."""
    now = now or utcnow()
    async with db.unit_of_work() as session:
        claimed = await _claim(session, now)
        if not claimed:
            return {"delivered": 0, "retried": 0, "dead": 0}
        targets = {
            t.id: t
            for t in await session.scalars(
                select(DataTarget).where(
                    one_of(session, DataTarget.id, [d.target_id for d in claimed])
                )
            )
        }
        documents = await _documents(session, claimed)
    outcome: dict[tuple[str, str], tuple[str, str | None]] = {}
    # One write per target and model version (a webhook's body names one; old and new
    # versions are pending together after a change of the model).
    for target_id, version in sorted({(d.target_id, d.version) for d in claimed}):
        target = targets[target_id]
        group = [d for d in claimed if (d.target_id, d.version) == (target_id, version)]
        rows = []
        for d in group:
            doc = documents.get((d.model_id, d.version, d.record_key))
            if doc is None:  # archived under a version since replaced: wanted again later
                outcome[(target_id, d.record_key)] = ("retry", "not in the archive")
                continue
            values = json.loads(doc)["systems"].get(target.system, {})
            rows.append(TargetRow(d.record_key, d.model_id, d.version, d.hash, values))
        result = await _write(target, rows)
        for row in rows:  # a refusal of several: each alone, so one record dies, not all
            refused = result[0] == "dead" and len(rows) > 1
            outcome[(target_id, row.key)] = await _write(target, [row]) if refused else result
    return await _record(db, claimed, outcome, now)


async def _write(target: DataTarget, rows: Sequence[TargetRow]) -> tuple[str, str | None]:
    try:
        await _writer(target).write(rows)
        return ("delivered", None)
    except TargetRefused as exc:
        return ("dead", f"refused: {exc}"[:500])
    except TargetUnavailable as exc:
        return ("retry", f"unavailable: {exc}"[:500])
    except Exception as exc:  # a store's own error: retried like an outage
        log.warning("data-model delivery failed", extra={"target": target.name}, exc_info=True)
        return ("retry", f"{type(exc).__name__}: {exc}"[:500])


async def _record(
    db: Database,
    claimed: Sequence[Delivery],
    outcome: Mapping[tuple[str, str], tuple[str, str | None]],
    now: datetime,
) -> dict[str, int]:
    limit = live_config.get(DELIVERY_ATTEMPTS)
    rows: dict[str, list[dict[str, Any]]] = {"delivered": [], "retried": [], "dead": []}
    for d in claimed:
        result, error = outcome[(d.target_id, d.record_key)]
        params = {
            "o_target": d.target_id,
            "o_key": d.record_key,
            "o_hash": d.hash,
            "o_attempts": d.attempts + 1,
            "o_error": error,
            "o_now": now,
            "o_leased": d.next_attempt_at,
        }
        if result == "delivered":
            rows["delivered"].append(params)
        elif result == "dead" or d.attempts + 1 >= limit:
            rows["dead"].append(params)
        else:
            rows["retried"].append({**params, "o_next": now + _backoff(d.attempts + 1)})
    async with db.unit_of_work() as session:
        for kind, batch in rows.items():
            if batch:
                await session.execute(OUTCOMES[kind], batch)
        await session.execute(CHANGED_MEANWHILE, [p for b in rows.values() for p in b])
    return {kind: len(batch) for kind, batch in rows.items()}


# --------------------------------------------------------------------------- dead letters


async def dead_letters(
    session: AsyncSession, model_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[Delivery]:
    stmt = select(Delivery).where(Delivery.model_id == model_id, Delivery.state == "dead")
    return await DEAD_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def replay(
    session: AsyncSession,
    principal: Principal | None,
    model_id: str,
    *,
    target: DataTarget | None = None,
    keys: Sequence[str] = (),
) -> int:
    """Dead deliveries of the model (of one target, of some keys) back to pending; how many."""
    stmt = (
        update(Delivery)
        .where(Delivery.model_id == model_id, Delivery.state == "dead")
        .values(state="pending", attempts=0, next_attempt_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if target is not None:
        stmt = stmt.where(Delivery.target_id == target.id)
    if keys:
        stmt = stmt.where(one_of(session, Delivery.record_key, list(keys)))
    count = int(getattr(await session.execute(stmt), "rowcount", 0) or 0)
    await record_audit(session, principal, "data_model.replay", model_id, {"replayed": count})
    return count


async def rebuild(
    session: AsyncSession,
    principal: Principal | None,
    model_id: str,
    version: int,
    target: DataTarget,
) -> int:
    """Want every archived record of ``version`` in ``target`` again; how many."""
    total = 0
    after = ""
    while True:
        page = (
            await session.execute(
                select(ArchivedRecord.record_key, ArchivedRecord.hash, ArchivedRecord.document)
                .where(
                    ArchivedRecord.model_id == model_id,
                    ArchivedRecord.version == version,
                    ArchivedRecord.record_key > after,
                )
                .order_by(ArchivedRecord.record_key)
                .limit(1000)
            )
        ).all()
        if not page:
            break
        records = [(k, version, h, json.loads(doc)["systems"]) for k, h, doc in page]
        total += await want(session, [target], model_id, records)
        after = page[-1][0]
    await record_audit(
        session,
        principal,
        "data_model.target.rebuild",
        f"{model_id}/{target.name}",
        {"records": total},
    )
    return total


# --------------------------------------------------------------------------- feeding


async def sync_rows(
    session: AsyncSession,
    model_id: str,
    rows: Sequence[Any],
    *,
    only: DataTarget | None = None,
) -> Work:
    """Assemble ``rows`` with the model's current version, archive them, hand what changed
    to every target (the archive never calls it changed again) and all ``only`` lacks to it."""
    from incentive.data_models import chain, service

    model = await service.get(session, model_id)
    definition = service.definition_of(await service.version_of(session, model_id, model.version))
    work = Work(model_id, model.version, definition, rows)
    handlers = [
        *chain.chain_for(definition, archive=True),
        HandOff(await targets_of(session, model_id)),
        *([HandOff([only], every=True)] if only is not None else []),
    ]
    return await chain.run(session, handlers, work)


async def backfill_page(
    session: AsyncSession,
    model_id: str,
    *,
    position: str | None,
    only: DataTarget | None = None,
    limit: int = 500,
) -> tuple[Work, str | None]:
    """Sync one page of the model's source after ``position``; the work and the next one."""
    from incentive.data_models import service

    model = await service.get(session, model_id)
    page = await get_source(model.source).page(session, after=position, limit=limit)
    work = await sync_rows(session, model_id, page.rows, only=only)
    return work, page.next_after
