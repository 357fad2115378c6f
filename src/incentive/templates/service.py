"""Campaign templates: versions drafted, published (then never changed) and retired by
operators; the published version a campaign is made from, and its content checked.

Contract:

- ``create`` saves a draft: version 1 of a new key, or the next version of a key (its kind
  cannot change). Only a draft is edited; ``publish`` freezes it, ``retire`` takes it out
  of use for new campaigns (campaigns made from it keep it).
- Every change is audited in the caller's transaction. Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.principal import Principal
from incentive.campaigns.kinds import get_kind
from incentive.db import utcnow
from incentive.errors import InvalidField
from incentive.kit.pagination import KeyInt, Keyset, Slice
from incentive.templates.errors import TemplateNotFound, TemplatePublished
from incentive.templates.fields import FieldSpec, check_content
from incentive.templates.models import CampaignTemplate

LISTING = Keyset((CampaignTemplate.id,), tuple[KeyInt], descending=True)


def fields_of(template: CampaignTemplate) -> tuple[FieldSpec, ...]:
    return tuple(FieldSpec.model_validate(f) for f in template.fields)


def _dump(fields: Sequence[FieldSpec]) -> list[dict[str, Any]]:
    return [f.model_dump(mode="json", exclude_none=True) for f in fields]


async def create(
    session: AsyncSession,
    principal: Principal,
    *,
    key: str,
    kind: str,
    name: str,
    description: str,
    fields: Sequence[FieldSpec],
) -> CampaignTemplate:
    get_kind(kind)
    latest = (
        await session.execute(
            select(CampaignTemplate)
            .where(CampaignTemplate.key == key)
            .order_by(CampaignTemplate.version.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if latest is not None and latest.kind != kind:
        raise InvalidField("kind", "same-kind", f"template {key} is for {latest.kind} campaigns")
    template = CampaignTemplate(
        key=key,
        version=1 if latest is None else latest.version + 1,
        kind=kind,
        name=name,
        description=description,
        status="draft",
        fields=_dump(fields),
        created_by=principal.id,
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            session.add(template)
            await session.flush()
    except IntegrityError:
        raise TemplatePublished(
            f"template {key} got version {template.version} concurrently; try again"
        ) from None
    await record_audit(
        session, principal, "template.create", f"{key}@{template.version}", {"kind": kind}
    )
    return template


async def get(session: AsyncSession, key: str, version: int) -> CampaignTemplate:
    found = (
        await session.execute(
            select(CampaignTemplate).where(
                CampaignTemplate.key == key, CampaignTemplate.version == version
            )
        )
    ).scalar_one_or_none()
    if found is None:
        raise TemplateNotFound(f"template {key} has no version {version}", key=key)
    return found


async def visible(
    session: AsyncSession, principal: Principal, key: str, version: int
) -> CampaignTemplate:
    """A version the caller may read: operators every one, others published ones."""
    template = await get(session, key, version)
    if template.status != "published" and not principal.is_operator:
        raise TemplateNotFound(f"template {key} has no version {version}", key=key)
    return template


async def edit(
    session: AsyncSession,
    principal: Principal,
    key: str,
    version: int,
    changes: Mapping[str, Any],
) -> CampaignTemplate:
    template = await get(session, key, version)
    values = dict(changes)
    if not values:  # nothing to change (an UPDATE with no SET is a syntax error)
        if template.status != "draft":
            raise TemplatePublished(
                f"template {key}@{version} is {template.status}; make a new version to change it"
            )
        return template
    if "fields" in values:
        values["fields"] = _dump(values["fields"])
    won = await session.execute(
        update(CampaignTemplate)
        .where(CampaignTemplate.id == template.id, CampaignTemplate.status == "draft")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise TemplatePublished(
            f"template {key}@{version} is {template.status}; make a new version to change it"
        )
    await record_audit(
        session, principal, "template.edit", f"{key}@{version}", {"changed": sorted(values)}
    )
    await session.refresh(template)
    return template


async def publish(
    session: AsyncSession, principal: Principal, key: str, version: int, *, to: str
) -> CampaignTemplate:
    """Move a version on: ``draft → published`` (frozen) or ``published → retired``."""
    template = await get(session, key, version)
    source = {"published": "draft", "retired": "published"}[to]
    values: dict[str, Any] = {"status": to}
    if to == "published":
        values["published_at"] = utcnow()
    won = await session.execute(
        update(CampaignTemplate)
        .where(CampaignTemplate.id == template.id, CampaignTemplate.status == source)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise TemplatePublished(f"template {key}@{version} is {template.status}, not {source}")
    await record_audit(session, principal, f"template.{to}", f"{key}@{version}")
    await session.refresh(template)
    return template


async def list_templates(
    session: AsyncSession,
    principal: Principal,
    *,
    key: str | None = None,
    kind: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[CampaignTemplate]:
    """Versions, newest first: operators see every one, others the published ones."""
    stmt = select(CampaignTemplate)
    if not principal.is_operator:
        stmt = stmt.where(CampaignTemplate.status == "published")
    if key is not None:
        stmt = stmt.where(CampaignTemplate.key == key)
    if kind is not None:
        stmt = stmt.where(CampaignTemplate.kind == kind)
    return await LISTING.fetch(session, stmt, cursor=cursor, limit=limit)


async def for_campaign(
    session: AsyncSession, kind: str, key: str, version: int | None
) -> CampaignTemplate:
    """The published version a new campaign of ``kind`` is made from (the latest published
    one unless ``version`` is given); 422 naming ``template`` otherwise."""
    stmt = select(CampaignTemplate).where(
        CampaignTemplate.key == key, CampaignTemplate.status == "published"
    )
    if version is None:
        newest = (
            select(func.max(CampaignTemplate.version))
            .where(CampaignTemplate.key == key, CampaignTemplate.status == "published")
            .scalar_subquery()
        )
        stmt = stmt.where(CampaignTemplate.version == newest)
    else:
        stmt = stmt.where(CampaignTemplate.version == version)
    template = (await session.execute(stmt)).scalar_one_or_none()
    if template is None:
        wanted = key if version is None else f"{key}@{version}"
        raise InvalidField(
            "template", "published", f"template: {wanted} is not a published template"
        )
    if template.kind != kind:
        raise InvalidField(
            "template", "same-kind", f"template: {key} is for {template.kind} campaigns"
        )
    return template


_FROZEN: dict[tuple[str, int], tuple[FieldSpec, ...]] = {}


async def frozen_fields(session: AsyncSession, key: str, version: int) -> tuple[FieldSpec, ...]:
    """The fields of a campaign's template version, cached once it is published (a published
    or retired version never changes)."""
    found = _FROZEN.get((key, version))
    if found is None:
        template = await get(session, key, version)
        found = fields_of(template)
        if template.status != "draft":
            _FROZEN[(key, version)] = found
    return found


def content_of(template: CampaignTemplate, content: Mapping[str, Any]) -> dict[str, Any]:
    """``content`` checked against ``template``'s fields, defaults filled in, as stored."""
    return check_content(fields_of(template), content)


async def checked_content(
    session: AsyncSession, key: str, version: int, content: Mapping[str, Any]
) -> dict[str, Any]:
    """``content`` checked against the campaign's template version (published or since
    retired: a campaign keeps its version)."""
    return content_of(await get(session, key, version), content)
