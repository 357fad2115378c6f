"""The data-model registry and its records.

Contract:

- ``create`` registers a model under an id of the operator's choosing, as version 1 of its
  definition (checked against its source: ``fields.check``); 409 ``data-model-exists`` for a
  taken id. ``change`` makes the next version when the source or fields change (a name or
  partner change makes none); versions never change, so records archived under an old
  version can be assembled again from it. Every change is audited in the caller's
  transaction.
- A model's records are read by operators, and by partners whose code the model lists
  (``partners``); anyone else gets the 404 of a model that does not exist.
- ``assemble`` runs the model's chain (``chain.py``) over one page of its source — of a
  campaign, changed since a time, after a cursor — and answers the records, the failures and
  the next cursor; with ``archive`` it also archives them.
- Nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.principal import Principal
from incentive.data_models import chain
from incentive.data_models.errors import DataModelExists, DataModelNotFound
from incentive.data_models.fields import Definition, check
from incentive.data_models.models import DataModel, DataModelVersion
from incentive.db import utcnow
from incentive.kit.pagination import KeyId, KeyInt, Keyset, Slice

LISTING = Keyset((DataModel.id,), tuple[KeyId], descending=False)
VERSIONS = Keyset((DataModelVersion.version,), tuple[KeyInt], descending=True)


def definition_of(version: DataModelVersion) -> Definition:
    return Definition.model_validate({"source": version.source, "fields": version.fields})


def _dump(definition: Definition) -> list[dict[str, Any]]:
    return [f.model_dump(mode="json") for f in definition.fields]


async def get(session: AsyncSession, model_id: str) -> DataModel:
    found = await session.get(DataModel, model_id)
    if found is None:
        raise DataModelNotFound(f"no data model {model_id!r}", model_id=model_id)
    return found


def may_read(principal: Principal, model: DataModel) -> bool:
    return principal.is_operator or (
        principal.role == "partner" and principal.name in (model.partners or [])
    )


async def readable(session: AsyncSession, principal: Principal, model_id: str) -> DataModel:
    """The model if the caller may read its records (404 otherwise, existence not told)."""
    found = await session.get(DataModel, model_id)
    if found is None or not may_read(principal, found):
        raise DataModelNotFound(f"no data model {model_id!r}", model_id=model_id)
    return found


async def version_of(session: AsyncSession, model_id: str, version: int) -> DataModelVersion:
    found = await session.get(DataModelVersion, (model_id, version))
    if found is None:
        raise DataModelNotFound(f"data model {model_id!r} has no version {version}")
    return found


def _version(model_id: str, version: int, definition: Definition, actor: str) -> DataModelVersion:
    return DataModelVersion(
        model_id=model_id,
        version=version,
        source=definition.source,
        fields=_dump(definition),
        created_by=actor,
        created_at=utcnow(),
    )


async def create(
    session: AsyncSession,
    principal: Principal | None,
    *,
    model_id: str,
    name: str,
    definition: Definition,
    partners: list[str],
) -> DataModel:
    check(definition)
    if await session.get(DataModel, model_id) is not None:
        raise DataModelExists(f"data model {model_id!r} exists", model_id=model_id)
    now = utcnow()
    model = DataModel(
        id=model_id,
        name=name,
        source=definition.source,
        version=1,
        partners=sorted(set(partners)),
        created_at=now,
        updated_at=now,
    )
    session.add(model)
    await session.flush()
    session.add(_version(model_id, 1, definition, principal.id if principal else "cli"))
    await session.flush()
    await record_audit(
        session, principal, "data_model.create", model_id, {"version": 1, "name": name}
    )
    return model


async def change(
    session: AsyncSession,
    principal: Principal | None,
    model_id: str,
    *,
    name: str | None = None,
    definition: Definition | None = None,
    partners: list[str] | None = None,
) -> DataModel:
    model = await get(session, model_id)
    await session.refresh(model, with_for_update=True)
    detail: dict[str, Any] = {}
    if definition is not None:
        check(definition)
        current = definition_of(await version_of(session, model_id, model.version))
        if definition != current:
            model.version += 1
            model.source = definition.source
            session.add(
                _version(model_id, model.version, definition, principal.id if principal else "cli")
            )
            detail["version"] = model.version
    if name is not None and name != model.name:
        model.name = detail["name"] = name
    if partners is not None and sorted(set(partners)) != model.partners:
        model.partners = detail["partners"] = sorted(set(partners))
    if detail:
        model.updated_at = utcnow()
        await session.flush()
        await record_audit(session, principal, "data_model.change", model_id, detail)
    return model


async def listing(
    session: AsyncSession, *, cursor: str | None = None, limit: int = 50
) -> Slice[DataModel]:
    return await LISTING.fetch(session, select(DataModel), cursor=cursor, limit=limit)


async def versions(
    session: AsyncSession, model_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[DataModelVersion]:
    await get(session, model_id)
    stmt = select(DataModelVersion).where(DataModelVersion.model_id == model_id)
    return await VERSIONS.fetch(session, stmt, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class Assembled:
    work: chain.Work
    next_cursor: str | None


async def assemble(
    session: AsyncSession,
    model: DataModel,
    *,
    version: int | None = None,
    campaign_id: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
    archive: bool = False,
) -> Assembled:
    """One page of the model's records (see the contract)."""
    row = await version_of(session, model.id, version or model.version)
    definition = definition_of(row)
    source = check(definition)
    page = await source.page(
        session, campaign_id=campaign_id, since=since, after=cursor, limit=limit
    )
    work = chain.Work(model.id, row.version, definition, page.rows)
    await chain.run(session, chain.chain_for(definition, archive=archive), work)
    return Assembled(work, page.next_after)
