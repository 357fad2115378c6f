"""Campaign HTTP API: drafts, review and the status machine, history, budget funding.

Status changes go through one endpoint, ``POST /campaigns/{id}/transitions`` with
``{"to": status, "reason": ...}``; the machine (``flows.TRANSITIONS``)::

    draft -> pending_review | cancelled
    pending_review -> approved | rejected (operators only; reject needs a reason) | draft
    rejected -> draft | cancelled
    approved -> active | cancelled
    active -> paused | ended
    paused -> active | ended
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from incentive.auth.principal import CurrentUser, MerchantStaff, Operator, Principal
from incentive.campaigns import flows, service
from incentive.campaigns.errors import (
    CampaignClosed,
    CampaignNotEditable,
    CampaignVersionConflict,
    InvalidTransition,
)
from incentive.campaigns.kinds import KindName
from incentive.campaigns.models import Campaign
from incentive.campaigns.schemas import (
    BudgetIn,
    BudgetOut,
    CampaignIn,
    CampaignOut,
    CampaignPage,
    CampaignPatch,
    Status,
    TransitionIn,
    TransitionOut,
    TransitionPage,
)
from incentive.deps import Session
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    problems,
)
from incentive.kit.idempotency import Claim, idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.kit.text import Line

router = APIRouter(prefix="/campaigns", tags=["campaigns"], route_class=JSONBodyRoute)

SEEING = (*AUTHENTICATED, *VALIDATION, NotFound)
MANAGING = (*AUTHENTICATED, *VALIDATION, Forbidden)
MANAGED = (*SEEING, Forbidden)

CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]


def _out(campaign: Campaign) -> CampaignOut:
    return CampaignOut.model_validate(campaign)


async def _shown(session: Session, principal: Principal, campaign: Campaign) -> CampaignOut:
    """The campaign as ``principal`` may read it (customers: the reviewed content only)."""
    out = _out(campaign)
    out.content = await service.shown_content(session, principal, campaign)
    return out


@router.post(
    "", response_model=CampaignOut, status_code=201, responses=problems(*MANAGING, NotFound)
)
async def create_campaign(
    body: CampaignIn, principal: MerchantStaff, session: Session
) -> CampaignOut:
    """Save a draft. Its budget account is opened in the ledger (empty) at the same time."""
    campaign = await service.create_campaign(
        session,
        principal,
        kind=body.kind,
        name=body.name,
        description=body.description,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        rules=body.rules,
        merchant_id=body.merchant_id,
        template=None if body.template is None else (body.template.key, body.template.version),
        content=body.content,
    )
    return _out(campaign)


@router.get("", response_model=CampaignPage, responses=problems(*AUTHENTICATED, *VALIDATION))
async def list_campaigns(
    principal: CurrentUser,
    session: Session,
    status: Annotated[Status | None, Query()] = None,
    kind: Annotated[KindName | None, Query()] = None,
    merchant: Annotated[Line | None, Query(min_length=1, max_length=32)] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> CampaignPage:
    """Newest first. Customers see active campaigns only; merchant staff their merchant's
    campaigns and active ones; operators everything."""
    page = await service.list_campaigns(
        session,
        principal,
        status=status,
        kind=kind,
        merchant_id=merchant,
        cursor=cursor,
        limit=limit,
    )
    return CampaignPage(
        items=[await _shown(session, principal, c) for c in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{campaign_id}", response_model=CampaignOut, responses=problems(*SEEING))
async def get_campaign(
    campaign_id: CampaignId, principal: CurrentUser, session: Session
) -> CampaignOut:
    """One campaign the caller may see (404 otherwise)."""
    return await _shown(
        session, principal, await service.visible_campaign(session, principal, campaign_id)
    )


@router.patch(
    "/{campaign_id}",
    response_model=CampaignOut,
    responses=problems(*MANAGED, CampaignNotEditable, CampaignVersionConflict),
)
async def edit_campaign(
    campaign_id: CampaignId, body: CampaignPatch, principal: MerchantStaff, session: Session
) -> CampaignOut:
    """Edit a draft or rejected campaign (409 otherwise); ``rules`` is replaced whole."""
    # An explicit null means "leave as is": every editable field is required on the campaign.
    changes = body.model_dump(exclude_none=True, exclude={"version"})
    campaign = await service.edit_campaign(
        session, principal, campaign_id, changes=changes, version=body.version
    )
    return _out(campaign)


@router.post(
    "/{campaign_id}/transitions",
    name="transition_campaign",
    response_model=CampaignOut,
    responses=problems(*MANAGED, InvalidTransition, CampaignVersionConflict, Conflict),
)
async def transition(
    campaign_id: CampaignId, body: TransitionIn, principal: MerchantStaff, session: Session
) -> CampaignOut:
    """Move the campaign to ``to``; 409 ``invalid-transition`` names ``from`` and ``to``."""
    campaign = await flows.transition(
        session,
        principal,
        campaign_id,
        to_status=body.to,
        reason=body.reason,
        version=body.version,
    )
    return _out(campaign)


@router.get(
    "/{campaign_id}/history",
    response_model=TransitionPage,
    responses=problems(*MANAGED),
    name="list_campaign_transitions",
)
async def history(
    campaign_id: CampaignId,
    principal: MerchantStaff,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> TransitionPage:
    """Every status change, oldest first (creation included)."""
    campaign = await service.managed_campaign(session, principal, campaign_id)
    page = await flows.history(session, campaign.id, cursor=cursor, limit=limit)
    return TransitionPage.of(page, TransitionOut.model_validate)


@router.get(
    "/{campaign_id}/budget",
    name="get_campaign_budget",
    response_model=BudgetOut,
    responses=problems(*MANAGED),
)
async def budget(campaign_id: CampaignId, principal: MerchantStaff, session: Session) -> BudgetOut:
    """The campaign's budget account: asset, amount funded and balance left."""
    campaign = await service.managed_campaign(session, principal, campaign_id)
    return BudgetOut.model_validate(await service.budget(session, campaign))


@router.post(
    "/{campaign_id}/budget",
    name="fund_campaign_budget",
    response_model=BudgetOut,
    status_code=201,
    responses=problems(*MANAGED, CampaignClosed, IdempotencyConflict, Conflict),
)
@idempotent(status_code=201)
async def fund_budget(
    campaign_id: CampaignId, body: BudgetIn, principal: Operator, session: Session, claim: Claim
) -> BudgetOut:
    """Fund the budget from another account of the same asset. Requires `Idempotency-Key`:
    a retry with the same key and body replays the first answer and moves nothing."""
    funded = await service.fund_budget(
        session,
        principal,
        campaign_id,
        amount=body.amount,
        from_account_id=body.from_account_id,
        idempotency_key=f"campaign.budget:{principal.id}:{claim.key}",
    )
    return BudgetOut.model_validate(funded)
