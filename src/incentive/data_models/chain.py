"""The handler chain that turns source rows into a model's records.

A chain is a list of typed handlers built from the model definition (``chain_for``), each
registered here by name, run in order over one batch (a ``Work``):

1. ``LoadRelated`` — the related records every ``lookup`` rule reads, in one ``by_keys`` per
   (source) for the whole batch;
2. ``ApplyRules`` — each field's rule over each row, giving the record's values per target
   system under their mapped names; a rule that fails drops **that record only**, with the
   field, the rule and why (``Failure``);
3. ``CheckValues`` — each value is JSON (text without NUL, at most ``MAX_TEXT`` characters,
   an integer within BIGINT, a finite number), else that record fails at that field;
4. ``Archive`` (when the chain archives) — each record's canonical JSON and hash upserted
   by (model, version, key) in one statement; a record whose archived hash is the same is not
   written; the keys written are kept on the work for the hand-off to targets (two
   concurrent archivers may both count a key: a hand-off is idempotent).

Loading the source rows is the caller's (a page of the source, or the keys an event names),
so the same chain serves a query and a sync.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.data_models.fields import Definition
from incentive.data_models.models import ArchivedRecord
from incentive.data_models.records import AssembledRecord
from incentive.data_models.rules import Lookups, RuleFailed
from incentive.db import insert as db_insert
from incentive.db import utcnow
from incentive.kit.sources import SourceRow, get_source

MAX_TEXT = 10_000
_BIGINT = 2**63
_ARCHIVE = cast(Table, ArchivedRecord.__table__)


@dataclass(frozen=True)
class Failure:
    key: str
    field: str
    rule: str
    detail: str


@dataclass
class Work:
    model_id: str
    version: int
    definition: Definition
    rows: Sequence[SourceRow]
    related: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    records: list[AssembledRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: keys whose archived hash changed (new or different)
    changed: list[str] = field(default_factory=list)


class Handler(Protocol):
    name: ClassVar[str]

    async def __call__(self, session: AsyncSession, work: Work) -> None: ...


class LoadRelated:
    name: ClassVar[str] = "load_related"

    async def __call__(self, session: AsyncSession, work: Work) -> None:
        wanted: dict[str, set[str]] = {}
        for spec in work.definition.fields:
            target = spec.rule.looks_up()
            if target is None:
                continue
            for row in work.rows:
                value = row.values.get(spec.key)
                if value is not None:
                    wanted.setdefault(target[0], set()).add(str(value))
        for source_name, keys in wanted.items():
            for row in await get_source(source_name).by_keys(session, sorted(keys)):
                work.related[(source_name, row.key)] = row.values


def _assemble(
    row: SourceRow, definition: Definition, lookups: Lookups
) -> dict[str, dict[str, Any]] | Failure:
    systems: dict[str, dict[str, Any]] = {}
    for spec in definition.fields:
        try:
            value = spec.rule.apply(row.values.get(spec.key), row.values, lookups)
        except RuleFailed as failed:
            return Failure(row.key, spec.key, spec.rule.type, failed.detail)
        systems.setdefault(spec.target_system, {})[spec.mapped_field] = value
    return systems


class ApplyRules:
    name: ClassVar[str] = "apply_rules"

    async def __call__(self, session: AsyncSession, work: Work) -> None:
        for row in work.rows:
            found = _assemble(row, work.definition, work.related)
            if isinstance(found, Failure):
                work.failures.append(found)
            else:
                work.records.append(
                    AssembledRecord(work.model_id, work.version, row.key, row.campaign_id, found)
                )


def _bad(value: Any) -> str | None:
    """Why ``value`` cannot be sent as JSON to any target (None: it can)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_BIGINT <= value < _BIGINT else "integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "not a finite number"
    if isinstance(value, str):
        if "\x00" in value:
            return "text with a NUL character"
        return None if len(value) <= MAX_TEXT else f"text longer than {MAX_TEXT:,} characters"
    if isinstance(value, list):
        return next((why for v in value if (why := _bad(v))), None)
    if isinstance(value, dict):
        return next((why for v in value.values() if (why := _bad(v))), None)
    if hasattr(value, "isoformat"):
        return None
    return f"a {type(value).__name__} is not JSON"


class CheckValues:
    name: ClassVar[str] = "check_values"

    async def __call__(self, session: AsyncSession, work: Work) -> None:
        by_place = {(f.target_system, f.mapped_field): f for f in work.definition.fields}
        kept: list[AssembledRecord] = []
        for record in work.records:
            found = next(
                (
                    (place, why)
                    for system, values in record.systems.items()
                    for name, value in values.items()
                    if (why := _bad(value)) and (place := (system, name))
                ),
                None,
            )
            if found is None:
                kept.append(record)
                continue
            spec = by_place[found[0]]
            work.failures.append(Failure(record.key, spec.key, spec.rule.type, found[1]))
        work.records = kept


async def archived(
    session: AsyncSession, model_id: str, version: int, keys: Sequence[str], *columns: Any
) -> list[tuple[Any, ...]]:
    """(key, *columns) of the archived records of (``model_id``, ``version``) with ``keys``.

    On PostgreSQL a join on ``unnest(:keys)``: one index lookup per key whatever the plan.
    ``record_key = ANY(:keys)`` (the index's third column) became a scan of every record of
    the version once PostgreSQL moved the prepared statement to its generic plan (from the
    sixth run on): a cost per page that grew with the archive (30 ms a page of 200 at 4,000
    records, ten times the lookups)."""
    key = ArchivedRecord.record_key
    if session.get_bind().dialect.name == "postgresql":
        wanted = (
            func.unnest(bindparam(None, list(keys), type_=ARRAY(key.type)))
            .table_valued("key")
            .render_derived(name="wanted")
        )
        stmt = (
            select(key, *columns)
            .select_from(wanted)
            .join(
                ArchivedRecord,
                (ArchivedRecord.model_id == model_id)
                & (ArchivedRecord.version == version)
                & (key == wanted.c.key),
            )
        )
    else:
        stmt = select(key, *columns).where(
            ArchivedRecord.model_id == model_id, ArchivedRecord.version == version, key.in_(keys)
        )
    return [tuple(row) for row in await session.execute(stmt)]


class Archive:
    name: ClassVar[str] = "archive"

    async def __call__(self, session: AsyncSession, work: Work) -> None:
        if not work.records:
            return
        held = dict(
            await archived(
                session,
                work.model_id,
                work.version,
                [r.key for r in work.records],
                ArchivedRecord.hash,
            )
        )
        now = utcnow()
        rows = [
            {
                "model_id": r.model_id,
                "version": r.version,
                "record_key": r.key,
                "campaign_id": r.campaign_id,
                "document": r.canonical(),
                "hash": r.hash,
                "archived_at": now,
            }
            for r in work.records
            if held.get(r.key) != r.hash
        ]
        if not rows:
            return
        stmt = db_insert(session.get_bind().dialect.name, _ARCHIVE)
        stmt = stmt.on_conflict_do_update(
            index_elements=["model_id", "version", "record_key"],
            set_={c: stmt.excluded[c] for c in ("document", "hash", "campaign_id", "archived_at")},
        )
        await session.execute(stmt, rows)
        work.changed += [str(row["record_key"]) for row in rows]


#: every handler, by name (the chain is built from these, never from arbitrary strings)
HANDLERS: dict[str, type[Handler]] = {
    h.name: h for h in (LoadRelated, ApplyRules, CheckValues, Archive)
}


def chain_for(definition: Definition, *, archive: bool) -> list[Handler]:
    """The handlers a model's definition needs, in order."""
    chain: list[Handler] = []
    if any(f.rule.looks_up() for f in definition.fields):
        chain.append(LoadRelated())
    chain += [ApplyRules(), CheckValues()]
    if archive:
        chain.append(Archive())
    return chain


async def run(session: AsyncSession, chain: Sequence[Handler], work: Work) -> Work:
    for handler in chain:
        await handler(session, work)
    return work
