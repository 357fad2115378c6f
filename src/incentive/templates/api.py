"""Campaign templates over HTTP: operators draft, publish and retire versions; merchant staff
read the published ones to make campaigns from."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from incentive.auth.principal import CurrentUser, Operator
from incentive.campaigns.kinds import KindName
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.templates import service
from incentive.templates.errors import TemplateNotFound, TemplatePublished
from incentive.templates.models import CampaignTemplate
from incentive.templates.schemas import (
    TemplateIn,
    TemplateKey,
    TemplateOut,
    TemplatePage,
    TemplatePatch,
)

router = APIRouter(prefix="/templates", tags=["templates"], route_class=JSONBodyRoute)

Key = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="template key")]
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
OPERATING = (*AUTHENTICATED, *VALIDATION, Forbidden)
FOUND = (*OPERATING, TemplateNotFound)


def _out(template: CampaignTemplate) -> TemplateOut:
    return TemplateOut.model_validate(template)


@router.post(
    "",
    response_model=TemplateOut,
    status_code=201,
    responses=problems(*OPERATING, TemplatePublished),
)
async def create_template(body: TemplateIn, principal: Operator, session: Session) -> TemplateOut:
    """Draft a template version: version 1 of a new key, or the next version of a key."""
    return _out(
        await service.create(
            session,
            principal,
            key=body.key,
            kind=body.kind,
            name=body.name,
            description=body.description,
            fields=body.fields,
        )
    )


@router.get("", response_model=TemplatePage, responses=problems(*AUTHENTICATED, *VALIDATION))
async def list_templates(
    principal: CurrentUser,
    session: Session,
    key: Annotated[TemplateKey | None, Query()] = None,
    kind: Annotated[KindName | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> TemplatePage:
    """Versions, newest first: operators see drafts and retired ones too, others the
    published ones."""
    page = await service.list_templates(
        session, principal, key=key, kind=kind, cursor=cursor, limit=limit
    )
    return TemplatePage.of(page, _out)


@router.get(
    "/{key}/versions/{version}",
    name="get_template",
    response_model=TemplateOut,
    responses=problems(*AUTHENTICATED, *VALIDATION, TemplateNotFound),
)
async def get_template(
    key: Key, version: VersionPath, principal: CurrentUser, session: Session
) -> TemplateOut:
    """One version (others than operators: published ones only)."""
    return _out(await service.visible(session, principal, key, version))


@router.patch(
    "/{key}/versions/{version}",
    name="edit_template",
    response_model=TemplateOut,
    responses=problems(*FOUND, TemplatePublished),
)
async def edit_template(
    key: Key, version: VersionPath, body: TemplatePatch, principal: Operator, session: Session
) -> TemplateOut:
    """Change a draft version (409 once published: make a new version instead)."""
    changes = body.model_dump(exclude_none=True)
    if body.fields is not None:
        changes["fields"] = body.fields
    return _out(await service.edit(session, principal, key, version, changes))


@router.post(
    "/{key}/versions/{version}/{action}",
    name="publish_template",
    response_model=TemplateOut,
    responses=problems(*FOUND, TemplatePublished),
)
async def publish_template(
    key: Key,
    version: VersionPath,
    action: Annotated[Literal["publish", "retire"], Path()],
    principal: Operator,
    session: Session,
) -> TemplateOut:
    """``publish``: freeze a draft (it never changes again). ``retire``: no new campaigns
    from it (campaigns made from it keep it)."""
    to = "published" if action == "publish" else "retired"
    return _out(await service.publish(session, principal, key, version, to=to))
