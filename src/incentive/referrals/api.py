"""Referrals over HTTP: the referral campaigns a caller may refer in, invites (token, link,
QR code), a customer's explicit acceptance, the referrer's invites and referrals, and the
public page ``/i/{token}`` a referee opens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.responses import Response as StarletteResponse

from incentive.auth import service as auth
from incentive.auth.identity import client_address, pepper
from incentive.auth.principal import CurrentUser, Customer
from incentive.campaigns.kinds import CampaignFacts
from incentive.deps import QrQuery, Session, database, link_qr, public_base
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Forbidden,
    IdempotencyConflict,
    InvalidField,
    NotFound,
    problems,
)
from incentive.kit.codes import is_public_token
from incentive.kit.idempotency import idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.referrals import accept, report, service
from incentive.referrals.errors import InviteNotFound, MayNotRefer, ReferralsClosed
from incentive.referrals.models import Referral, ReferralInvite, ReferralReward
from incentive.referrals.rules import referral_rules
from incentive.referrals.schemas import (
    CampaignReferralOut,
    CampaignReferralPage,
    EvidenceIn,
    InviteOut,
    InvitePage,
    ReferralCampaignOut,
    ReferralCampaignPage,
    ReferralOut,
    ReferralPage,
    ReferralReport,
    ReferralState,
    RewardLineOut,
    RewardOut,
    RewardPage,
)

router = APIRouter(tags=["referrals"], route_class=JSONBodyRoute)
# Mounted at the root, not under /api/v1: the link a referee opens.
public_router = APIRouter()

CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]
Token = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="an invite's token")]
SEEING = (*AUTHENTICATED, *VALIDATION, NotFound)


def invite_out(request: Request, invite: ReferralInvite) -> InviteOut:
    return InviteOut(
        id=invite.id,
        token=invite.token,
        campaign_id=invite.campaign_id,
        link=f"{public_base(request)}/i/{invite.token}",
        qr=f"/api/v1/invites/{invite.token}/qr",
        created_at=invite.created_at,
        expires_at=invite.expires_at,
    )


def campaign_out(campaign: CampaignFacts) -> ReferralCampaignOut:
    rules = referral_rules(campaign)
    return ReferralCampaignOut(
        campaign_id=campaign.id,
        name=campaign.name,
        task_title=rules.task_title,
        task_description=rules.task_description,
        ends_at=campaign.ends_at,
        referrer_reward=rules.reward("referrer"),
        referee_reward=rules.reward("referee"),
        attribution_days=rules.attribution_days,
        max_referrals_per_user=rules.max_referrals_per_user,
        max_referrals_per_day=rules.max_referrals_per_day,
    )


def reward_out(row: ReferralReward) -> RewardOut:
    return RewardOut.model_validate(row, from_attributes=True)


def _referral_fields(row: Referral, referee: str, reward: ReferralReward | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "campaign_id": row.campaign_id,
        "invite_id": row.invite_id,
        "referee": referee,
        "state": row.state,
        "reason": row.reason,
        "via": row.via,
        "created_at": row.created_at,
        "business_due_at": row.business_due_at,
        "completed_at": row.completed_at,
        "release_at": row.release_at,
        "reward": None if reward is None else reward_out(reward),
    }


def referral_out(row: Referral, referee: str, reward: ReferralReward | None = None) -> ReferralOut:
    return ReferralOut(**_referral_fields(row, referee, reward))


def evidence(request: Request, body: EvidenceIn) -> accept.Evidence:
    peppered = pepper(request)
    sent = (("device", body.device_id), ("instrument", body.payment_instrument_hash))
    address = client_address(request)
    return accept.Evidence(
        signals=peppered.signals(sent),
        address_hash=None if address is None else peppered.hash("address", address),
    )


@router.get(
    "/me/referral-campaigns",
    name="list_my_referral_campaigns",
    response_model=ReferralCampaignPage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_referral_campaigns(
    principal: CurrentUser, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> ReferralCampaignPage:
    """The active referral campaigns the caller may refer in now (role, account age, caps),
    newest first; a page may hold fewer than `limit` items while `next_cursor` goes on."""
    page = await service.open_campaigns(session, principal, cursor=cursor, limit=limit)
    return ReferralCampaignPage.of(page, campaign_out)


@router.post(
    "/campaigns/{campaign_id}/invites",
    name="create_invite",
    response_model=InviteOut,
    status_code=201,
    responses=problems(*SEEING, MayNotRefer, ReferralsClosed, IdempotencyConflict),
)
@idempotent(status_code=201)
async def create_invite(
    campaign_id: CampaignId,
    body: EvidenceIn,
    principal: CurrentUser,
    session: Session,
    request: Request,
) -> InviteOut:
    """Invite for an active referral campaign (409 `referrals-closed` otherwise): a short
    opaque token, the invite link (`/i/{token}`) and its QR code. Refused (403
    `may-not-refer`, `reason` and `rule`) when the rules do not let the caller refer: role,
    account age, the campaign's or today's cap of accepted referrals. `device_id` and
    `payment_instrument_hash` (optional) are kept as peppered hashes for the self-referral
    check. Requires `Idempotency-Key` (a retry answers the first invite)."""
    made = await service.invite(session, principal, campaign_id)
    await accept.record_signals(session, principal.id, evidence(request, body).signals)
    return invite_out(request, made)


@router.get(
    "/me/invites",
    name="list_my_invites",
    response_model=InvitePage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_invites(
    principal: CurrentUser,
    session: Session,
    request: Request,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> InvitePage:
    """The caller's invites of every campaign, newest first."""
    page = await service.invites_of(session, principal.id, cursor=cursor, limit=limit)
    return InvitePage.of(page, lambda i: invite_out(request, i))


@router.get(
    "/me/referrals",
    name="list_my_referrals",
    response_model=ReferralPage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_referrals(
    principal: CurrentUser, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> ReferralPage:
    """The caller's referrals as a referrer, newest first: the referee's shown name, the
    state (accepted, rejected with its reason, completed, pending until `release_at`,
    rewarded, voided, expired), when, and the caller's own reward once completed."""
    page, referees = await service.referrals_of(session, principal.id, cursor=cursor, limit=limit)
    rewards = await report.referrer_rewards(session, page.items)

    def shape(row: Referral) -> ReferralOut:
        card = referees.get(row.referee_id)
        return referral_out(row, card.display_name if card else "", rewards.get(row.id))

    return ReferralPage.of(page, shape)


@router.get(
    "/me/referral-rewards",
    name="list_my_referral_rewards",
    response_model=RewardPage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_referral_rewards(
    principal: CurrentUser, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> RewardPage:
    """The caller's referral rewards, newest first — as a referrer, a referee, or a referrer's
    referrer (multi-level): pending (held), paid, voided or unpaid with the reason."""
    page = await report.rewards_of(session, principal.id, cursor=cursor, limit=limit)
    return RewardPage.of(page, reward_out)


@router.get(
    "/campaigns/{campaign_id}/referrals",
    name="list_campaign_referrals",
    response_model=CampaignReferralPage,
    responses=problems(*SEEING, Forbidden),
)
async def list_campaign_referrals(
    campaign_id: CampaignId,
    principal: CurrentUser,
    session: Session,
    state: ReferralState | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> CampaignReferralPage:
    """A referral campaign's referrals, newest first, optionally of one `state`: both
    parties, the state and its reason, the completing activity and refunds, the referrer's
    reward. Operators and the owning merchant's staff."""
    await report.managed_referral_campaign(session, principal, campaign_id)
    page = await report.campaign_referrals(
        session, campaign_id, state=state, cursor=cursor, limit=limit
    )
    rewards = await report.referrer_rewards(session, page.items)
    cards = await auth.user_cards(session, [r.referee_id for r in page.items])

    def shape(row: Referral) -> CampaignReferralOut:
        card = cards.get(row.referee_id)
        return CampaignReferralOut(
            **_referral_fields(row, card.display_name if card else "", rewards.get(row.id)),
            referrer_id=row.referrer_id,
            referee_id=row.referee_id,
            completed_by=row.completed_by,
            business_amount_fen=row.business_amount_fen,
            refunded_fen=row.refunded_fen,
        )

    return CampaignReferralPage.of(page, shape)


@router.get(
    "/campaigns/{campaign_id}/referrals/report",
    name="get_referral_report",
    response_model=ReferralReport,
    responses=problems(*SEEING, Forbidden),
)
async def get_referral_report(
    campaign_id: CampaignId, principal: CurrentUser, session: Session
) -> ReferralReport:
    """A referral campaign's report: invites, referrals by state, rejections by reason,
    rewards by side, level, type and state (count and amount), the budget left and what the
    escrow holds for pending rewards. Operators and the owning merchant's staff."""
    campaign = await report.managed_referral_campaign(session, principal, campaign_id)
    found = await report.report(session, campaign)
    return ReferralReport(
        campaign_id=campaign.id,
        invites=found.invites,
        referrals=found.referrals,
        rejected=found.rejected,
        rewards=[
            RewardLineOut.model_validate(line, from_attributes=True) for line in found.rewards
        ],
        asset=found.asset,
        budget_left=found.budget_left,
        escrow_held=found.escrow_held,
    )


@router.get(
    "/invites/{token}/qr",
    name="get_invite_qr",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}},
        **problems(*SEEING, InviteNotFound),
    },
)
async def invite_qr(
    token: Token,
    principal: CurrentUser,
    session: Session,
    request: Request,
    options: QrQuery,
) -> Response:
    """A QR code of the invite's link, for any signed-in user (the token is public: it is in
    the link itself); 404 for an unknown or expired invite."""
    found = await service.by_token(session, token)
    return link_qr(request, f"/i/{found.token}", options)


@router.post(
    "/invites/{token}/acceptance",
    name="create_invite_acceptance",
    response_model=ReferralOut,
    responses=problems(*SEEING, Forbidden, InviteNotFound, ReferralsClosed),
)
async def accept_invite(
    token: Token, body: EvidenceIn, principal: Customer, session: Session, request: Request
) -> ReferralOut:
    """A signed-in customer accepts the invite: the referral, `accepted` or `rejected` with
    its reason (self-referral, existing-account — the account is older than the invite —,
    ring, already-referred, referrer-cap, address-burst). Accepting again answers the first
    referral. 404 `invite-not-found` for an unknown or expired invite."""
    card = (await auth.user_cards(session, [principal.id]))[principal.id]
    referral = await accept.accept(
        session, token, principal.id, card.created_at, "acceptance", evidence(request, body)
    )
    return referral_out(referral, card.display_name)


async def open_invite(request: Request) -> StarletteResponse:
    """The invite as a referee sees it: the campaign's name, the task and who invited (their
    shown name only). 404 problem for an unknown or expired invite. Not an API operation: any
    query string is accepted (social apps add theirs)."""
    token = request.path_params["token"]
    if not is_public_token(token):
        raise InvalidField("token", "pattern", "token: 1-32 URL-safe characters")
    async with database(request).unit_of_work() as session:
        card = await service.invite_card(session, token)
    response = JSONResponse(
        {
            "token": card.token,
            "campaign_name": card.campaign_name,
            "task_title": card.task_title,
            "inviter": card.inviter,
            "expires_at": card.expires_at.isoformat(),
            "accept": f"/api/v1/invites/{card.token}/acceptance",
            "signup": "/api/v1/auth/signup",
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


public_router.add_route("/i/{token}", open_invite, methods=["GET"], include_in_schema=False)
