"""Join codes over HTTP: operators generate, list, export and void a campaign's codes;
merchant staff redeem a code to join its campaign and see whether they joined."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from incentive.auth.principal import Principal, require_roles
from incentive.campaigns import service as campaigns
from incentive.campaigns.errors import CampaignClosed
from incentive.deps import Session, database
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Forbidden,
    IdempotencyConflict,
    InvalidField,
    NotFound,
    problems,
)
from incentive.join_codes import service
from incentive.join_codes.errors import AlreadyJoined, CodeUsed, CodeVoid, JoinCodeNotFound
from incentive.join_codes.models import CampaignMerchant
from incentive.join_codes.schemas import (
    CodeStatus,
    GeneratedOut,
    GenerateIn,
    JoinCodeOut,
    JoinCodePage,
    MembershipOut,
    MembershipPage,
    RedemptionIn,
    VoidedOut,
    VoidIn,
)
from incentive.kit.idempotency import answer, idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit

router = APIRouter(tags=["join codes"], route_class=JSONBodyRoute)

CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]
Operator = Annotated[Principal, require_roles("operator")]
Staff = Annotated[Principal, require_roles("merchant")]
MerchantStaff = Annotated[Principal, require_roles("merchant", "operator")]
OPERATING = (*AUTHENTICATED, *VALIDATION, Forbidden, NotFound)


def _member(row: CampaignMerchant) -> MembershipOut:
    return MembershipOut(
        campaign_id=row.campaign_id,
        merchant_id=row.merchant_id,
        joined=True,
        code=row.code,
        joined_at=row.joined_at,
        joined_by=row.joined_by,
    )


def _export_path(campaign_id: str) -> str:
    return f"/api/v1/campaigns/{campaign_id}/join-codes/export"


@router.post(
    "/campaigns/{campaign_id}/join-codes",
    name="generate_join_codes",
    response_model=GeneratedOut,
    status_code=201,
    responses=problems(*OPERATING, CampaignClosed, IdempotencyConflict),
)
@idempotent(status_code=201)
async def generate(
    campaign_id: CampaignId, body: GenerateIn, principal: Operator, session: Session
) -> GeneratedOut:
    """Generate ``count`` (up to 1,000,000) single-use codes for a campaign that has not
    ended or been cancelled. Requires `Idempotency-Key`: a retry with the same key and body
    replays the answer and generates nothing. The codes are downloaded from ``export``."""
    done = await service.generate(session, campaign_id, body.count, body.prefix, principal)
    return GeneratedOut(
        campaign_id=done.campaign_id,
        count=done.count,
        prefix=done.prefix,
        export=_export_path(campaign_id),
    )


@router.get(
    "/campaigns/{campaign_id}/join-codes",
    name="list_join_codes",
    response_model=JoinCodePage,
    responses=problems(*OPERATING),
)
async def list_codes(
    campaign_id: CampaignId,
    principal: Operator,
    session: Session,
    status: Annotated[CodeStatus | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> JoinCodePage:
    """The campaign's codes in code order, with their state and who redeemed or voided
    them; ``status`` keeps one state."""
    await campaigns.get_campaign(session, campaign_id)
    page = await service.list_codes(session, campaign_id, status=status, cursor=cursor, limit=limit)
    return JoinCodePage.of(page, JoinCodeOut.model_validate)


@router.get(
    "/campaigns/{campaign_id}/join-codes/export",
    name="export_join_codes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}, **problems(*OPERATING)},
)
async def export(
    campaign_id: CampaignId,
    principal: Operator,
    session: Session,
    request: Request,
    status: Annotated[CodeStatus | None, Query()] = None,
) -> StreamingResponse:
    """Every code of the campaign as CSV (header line, then one code per line in code
    order), streamed: rows are read in chunks while the response is sent."""
    await campaigns.get_campaign(session, campaign_id)
    chunks = service.export_chunks(database(request).reader, campaign_id, status)
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="join-codes-{campaign_id}.csv"'},
    )


@router.post(
    "/campaigns/{campaign_id}/join-codes/void",
    name="void_join_codes",
    response_model=VoidedOut,
    responses=problems(*OPERATING),
)
async def void(
    campaign_id: CampaignId, body: VoidIn, principal: Operator, session: Session
) -> VoidedOut:
    """Void the given unused ``codes``, or every unused code with ``all_unused: true``;
    used codes stay used. Answers how many were voided (voiding again voids nothing)."""
    if body.codes is None and not body.all_unused:
        raise InvalidField("codes", "required", "codes: give codes, or all_unused: true")
    if body.codes is not None and body.all_unused:
        raise InvalidField("all_unused", "exclusive", "all_unused: give codes or all_unused")
    voided = await service.void(session, campaign_id, body.codes, principal)
    return VoidedOut(campaign_id=campaign_id, voided=voided)


@router.post(
    "/join-codes/redemptions",
    name="redeem_join_code",
    response_model=MembershipOut,
    status_code=201,
    responses=problems(
        *AUTHENTICATED,
        *VALIDATION,
        Forbidden,
        JoinCodeNotFound,
        CodeUsed,
        CodeVoid,
        AlreadyJoined,
        CampaignClosed,
    ),
)
async def redeem(body: RedemptionIn, principal: Staff, session: Session) -> JSONResponse:
    """Join the code's campaign as the caller's merchant. Exactly one merchant wins a code;
    409 `code-used`, `code-void`, `already-joined` (this code stays unused) or
    `campaign-conflict` (ended, cancelled or past its window); 404 for an unknown code.
    Redeeming again the code the merchant joined with answers the same 201, with
    `Idempotent-Replayed: true`."""
    if principal.merchant_id is None:
        raise Forbidden("only staff of a merchant redeem join codes")
    joined = await service.redeem(session, body.code, principal.merchant_id, principal.id)
    out = MembershipOut(
        campaign_id=joined.campaign_id,
        merchant_id=joined.merchant_id,
        joined=True,
        code=joined.code,
        joined_at=joined.joined_at,
        joined_by=joined.joined_by,
    )
    return answer(out.model_dump(mode="json"), 201, replayed=joined.replayed)


@router.get(
    "/campaigns/{campaign_id}/merchants",
    name="list_campaign_merchants",
    response_model=MembershipPage,
    responses=problems(*OPERATING),
)
async def list_merchants(
    campaign_id: CampaignId,
    principal: MerchantStaff,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> MembershipPage:
    """The merchants that joined the campaign, in the order they joined (operators, and
    the owning merchant's staff of a merchant campaign)."""
    await campaigns.managed_campaign(session, principal, campaign_id)
    page = await service.list_merchants(session, campaign_id, cursor=cursor, limit=limit)
    return MembershipPage.of(page, _member)


@router.get(
    "/campaigns/{campaign_id}/membership",
    name="get_campaign_membership",
    response_model=MembershipOut,
    responses=problems(*OPERATING),
)
async def membership(campaign_id: CampaignId, principal: Staff, session: Session) -> MembershipOut:
    """Whether the caller's merchant joined the campaign (and with which code). 404 for a
    campaign the merchant neither joined nor may see."""
    if principal.merchant_id is None:
        raise Forbidden("only staff of a merchant belong to campaigns")
    row = await service.membership(session, campaign_id, principal.merchant_id)
    if row is not None:
        return _member(row)
    await campaigns.visible_campaign(session, principal, campaign_id)
    return MembershipOut(campaign_id=campaign_id, merchant_id=principal.merchant_id, joined=False)
