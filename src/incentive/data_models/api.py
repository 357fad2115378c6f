"""Data models over HTTP: operators define them field by field (each change of fields a new
version, audited); operators and the partners a model lists read its records by id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.principal import Operator, PartnerOrOperator
from incentive.data_models import failures, service, sync
from incentive.data_models.errors import DataModelExists, DataModelNotFound
from incentive.data_models.fields import Definition
from incentive.data_models.models import DataModel, Delivery
from incentive.data_models.schemas import (
    AssemblyFailureOut,
    AssemblyFailurePage,
    CountOut,
    DataModelIn,
    DataModelOut,
    DataModelPage,
    DataModelPatch,
    DeliveryOut,
    DeliveryPage,
    FailureOut,
    RecordOut,
    RecordPage,
    ReplayIn,
    SourceOut,
    SourcesOut,
    TargetIn,
    TargetOut,
    TargetsOut,
    VersionOut,
    VersionPage,
)
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, InvalidField, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.kit.sources import get_source, source_names

router = APIRouter(tags=["data-models"], route_class=JSONBodyRoute)

ModelPath = Annotated[
    str, Path(pattern=r"^[a-z][a-z0-9_.-]{0,63}$", description="the data model's id")
]
TargetName = Annotated[
    str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="the target's name")
]
OPERATING = (*AUTHENTICATED, *VALIDATION, Forbidden)
FOUND = (*OPERATING, DataModelNotFound)


async def _out(session: Session, model: DataModel) -> DataModelOut:
    definition = service.definition_of(await service.version_of(session, model.id, model.version))
    return DataModelOut(
        id=model.id,
        name=model.name,
        source=model.source,
        version=model.version,
        partners=list(model.partners or []),
        fields=definition.fields,
        systems=definition.systems(),
        created_at=model.created_at,
        updated_at=model.updated_at,
    )


@router.get(
    "/data-model-sources",
    name="list_data_model_sources",
    response_model=SourcesOut,
    responses=problems(*OPERATING),
)
async def list_sources(principal: Operator) -> SourcesOut:
    """The modules data models can read, with their fields and module types."""
    return SourcesOut(
        sources=[SourceOut(name=n, fields=dict(get_source(n).fields)) for n in source_names()]
    )


@router.post(
    "/data-models",
    name="create_data_model",
    response_model=DataModelOut,
    status_code=201,
    responses=problems(*OPERATING, DataModelExists),
)
async def create_data_model(
    body: DataModelIn, principal: Operator, session: Session
) -> DataModelOut:
    """Register a data model as version 1: its source and its fields (key, module type,
    target system, mapped field, processing rule), each checked against the source — 422
    naming `fields.<i>.<part>`. 409 `data-model-exists` for a taken id. Audited."""
    model = await service.create(
        session,
        principal,
        model_id=body.id,
        name=body.name,
        definition=Definition(source=body.source, fields=body.fields),
        partners=body.partners,
    )
    return await _out(session, model)


@router.get(
    "/data-models",
    name="list_data_models",
    response_model=DataModelPage,
    responses=problems(*OPERATING),
)
async def list_data_models(
    principal: Operator, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> DataModelPage:
    """Every data model with its current version, by id."""
    page = await service.listing(session, cursor=cursor, limit=limit)
    return DataModelPage(
        items=[await _out(session, m) for m in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/data-models/{model_id}",
    name="get_data_model",
    response_model=DataModelOut,
    responses=problems(*FOUND),
)
async def get_data_model(
    model_id: ModelPath, principal: Operator, session: Session
) -> DataModelOut:
    """A data model and its current version's fields."""
    return await _out(session, await service.get(session, model_id))


@router.patch(
    "/data-models/{model_id}",
    name="change_data_model",
    response_model=DataModelOut,
    responses=problems(*FOUND),
)
async def change_data_model(
    model_id: ModelPath, body: DataModelPatch, principal: Operator, session: Session
) -> DataModelOut:
    """Change a data model: new `source` and `fields` (both) make the next version when they
    differ from the current one (records already assembled keep saying which version made
    them); `name` and `partners` change in place. Audited."""
    if (body.source is None) != (body.fields is None):
        raise InvalidField("fields", "together", "fields: give source and fields together")
    definition = None
    if body.source is not None and body.fields is not None:
        definition = Definition(source=body.source, fields=body.fields)
    model = await service.change(
        session,
        principal,
        model_id,
        name=body.name,
        definition=definition,
        partners=body.partners,
    )
    return await _out(session, model)


@router.get(
    "/data-models/{model_id}/versions",
    name="list_data_model_versions",
    response_model=VersionPage,
    responses=problems(*FOUND),
)
async def list_versions(
    model_id: ModelPath,
    principal: Operator,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> VersionPage:
    """A data model's versions, newest first, each with its fields."""
    page = await service.versions(session, model_id, cursor=cursor, limit=limit)
    return VersionPage.of(page, VersionOut.model_validate)


@router.get(
    "/data-models/{model_id}/records",
    name="list_data_model_records",
    response_model=RecordPage,
    responses=problems(*AUTHENTICATED, *VALIDATION, DataModelNotFound),
)
async def list_records(
    model_id: ModelPath,
    principal: PartnerOrOperator,
    session: Session,
    campaign: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
    since: Annotated[datetime | None, Query(description="changed at or after (ISO-8601)")] = None,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> RecordPage:
    """The model's records, assembled now in its shape (the current version, or `version`):
    of one `campaign`, changed `since`, one page at a time. A record a rule cannot take is
    answered with its `failure` (the field and the rule) instead of its values. For operators, and
    partners (API key) the model lists; others get a 404."""
    model = await service.readable(session, principal, model_id)
    if since is not None and since.tzinfo is None:
        raise InvalidField("since", "time-zone", "since: give a time zone (e.g. Z)")
    if since is not None:
        try:
            since = since.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+14:00 has no UTC instant
            raise InvalidField("since", "range", "since: out of range in UTC") from None
    found = await service.assemble(
        session,
        model,
        version=version,
        campaign_id=campaign,
        since=since,
        cursor=cursor,
        limit=limit,
    )
    work = found.work
    shaped = {
        r.key: RecordOut(
            key=r.key,
            version=r.version,
            hash=r.hash,
            systems={k: dict(v) for k, v in r.systems.items()},
        )
        for r in work.records
    }
    for f in work.failures:
        shaped[f.key] = RecordOut(
            key=f.key,
            version=work.version,
            hash=None,
            systems=None,
            failure=FailureOut(field=f.field, rule=f.rule, detail=f.detail),
        )
    items = [shaped[row.key] for row in work.rows if row.key in shaped]
    return RecordPage(items=items, next_cursor=found.next_cursor)


# --------------------------------------------------------------------------- sync


async def _delivery_counts(session: AsyncSession, model_id: str) -> dict[str, dict[str, int]]:
    """Records by delivery state, per target id."""
    rows = await session.execute(
        select(Delivery.target_id, Delivery.state, func.count())
        .where(Delivery.model_id == model_id)
        .group_by(Delivery.target_id, Delivery.state)
    )
    found: dict[str, dict[str, int]] = {}
    for target_id, state, n in rows:
        found.setdefault(target_id, {})[state] = int(n)
    return found


async def _targets(session: Session, model_id: str) -> list[TargetOut]:
    counts = await _delivery_counts(session, model_id)
    shaped = []
    for t in await sync.targets_of(session, model_id):
        try:
            config = sync.config_of(t)
            kind, where = config.kind, config.redacted()
        except ValidationError as exc:  # stored before a check it fails was added
            kind = str(t.config.get("kind", "?"))
            where = f"(not valid now: {exc.errors()[0]['msg']})"[:300]
        shaped.append(
            TargetOut(
                name=t.name,
                system=t.system,
                kind=kind,
                where=where,
                enabled=t.enabled,
                deliveries=counts.get(t.id, {}),
                created_at=t.created_at,
            )
        )
    return shaped


@router.post(
    "/data-models/{model_id}/targets",
    name="create_data_model_target",
    response_model=TargetOut,
    status_code=201,
    responses=problems(*FOUND),
)
async def create_target(
    model_id: ModelPath, body: TargetIn, principal: Operator, session: Session
) -> TargetOut:
    """Register a target of the model: a SQL table (PostgreSQL or MariaDB/MySQL), a Redis key
    space or an HTTP webhook, receiving the fields of one target `system`. Records synced from
    now on are delivered to it; to send it what was synced before, rebuild it. Audited."""
    model = await service.get(session, model_id)
    definition = service.definition_of(await service.version_of(session, model_id, model.version))
    await sync.add_target(
        session,
        principal,
        model_id,
        name=body.name,
        system=body.system,
        systems=definition.systems(),
        config=body.config,
    )
    return next(t for t in await _targets(session, model_id) if t.name == body.name)


@router.get(
    "/data-models/{model_id}/targets",
    name="list_data_model_targets",
    response_model=TargetsOut,
    responses=problems(*FOUND),
)
async def list_targets(model_id: ModelPath, principal: Operator, session: Session) -> TargetsOut:
    """The model's targets, each with its records by delivery state."""
    await service.get(session, model_id)
    return TargetsOut(targets=await _targets(session, model_id))


@router.post(
    "/data-models/{model_id}/targets/{target}/rebuild",
    name="rebuild_data_model_target",
    response_model=CountOut,
    responses=problems(*FOUND),
)
async def rebuild_target(
    model_id: ModelPath, target: TargetName, principal: Operator, session: Session
) -> CountOut:
    """Send every archived record of the model's current version to the target again
    (delivered by the workers, upserted there). Audited."""
    model = await service.get(session, model_id)
    found = await sync.target_named(session, model_id, target)
    return CountOut(count=await sync.rebuild(session, principal, model_id, model.version, found))


@router.get(
    "/data-models/{model_id}/dead-letters",
    name="list_data_model_dead_letters",
    response_model=DeliveryPage,
    responses=problems(*FOUND),
)
async def list_dead_letters(
    model_id: ModelPath,
    principal: Operator,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> DeliveryPage:
    """Deliveries that failed for good (attempts used up, or refused by the target), with
    the last error."""
    await service.get(session, model_id)
    names = {t.id: t.name for t in await sync.targets_of(session, model_id)}
    page = await sync.dead_letters(session, model_id, cursor=cursor, limit=limit)
    return DeliveryPage.of(
        page,
        lambda d: DeliveryOut(
            target=names.get(d.target_id, d.target_id),
            key=d.record_key,
            version=d.version,
            hash=d.hash,
            state=d.state,
            attempts=d.attempts,
            last_error=d.last_error,
            updated_at=d.updated_at,
        ),
    )


@router.post(
    "/data-models/{model_id}/dead-letters/replay",
    name="replay_data_model_dead_letters",
    response_model=CountOut,
    responses=problems(*FOUND),
)
async def replay_dead_letters(
    model_id: ModelPath, body: ReplayIn, principal: Operator, session: Session
) -> CountOut:
    """Try dead letters again (of one `target`, of some `keys`, or all): back to pending with
    their attempts reset. Audited."""
    await service.get(session, model_id)
    target = (
        None if body.target is None else await sync.target_named(session, model_id, body.target)
    )
    return CountOut(
        count=await sync.replay(session, principal, model_id, target=target, keys=body.keys)
    )


@router.get(
    "/data-models/{model_id}/failures",
    name="list_data_model_failures",
    response_model=AssemblyFailurePage,
    responses=problems(*FOUND),
)
async def list_failures(
    model_id: ModelPath,
    principal: Operator,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> AssemblyFailurePage:
    """Records a sync could not assemble (a rule or a value check refused one of their
    values), with the field, the rule and why; a record leaves the list once it assembles."""
    await service.get(session, model_id)
    page = await failures.listing(session, model_id, cursor=cursor, limit=limit)
    return AssemblyFailurePage.of(page, AssemblyFailureOut.model_validate)
