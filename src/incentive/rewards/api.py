"""Rewards over HTTP: the customer's claim, the live chain and its operation, the report and
the customer's rewards. Claims keep their own idempotency (the grant row holds the trigger's
key) because the grant is written in its own unit of work, like a flash-sale purchase."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from incentive.auth.principal import (
    CurrentUser,
    Customer,
    CustomerOutsideTransaction,
    Operator,
    OperatorOutsideTransaction,
    Principal,
)
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.db import Database
from incentive.deps import Session
from incentive.errors import (
    AUTHENTICATED,
    VALIDATION,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    ServiceUnavailable,
    problems,
)
from incentive.kit.idempotency import IdempotencyKey, answer, idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.rewards import grants, service, stock
from incentive.rewards.claims import Claims
from incentive.rewards.errors import (
    NoRewardAvailable,
    NotRewarding,
    RewardLimitReached,
    RewardNotFound,
    RewardTaken,
)
from incentive.rewards.models import RewardGrant, RewardItem
from incentive.rewards.rules import RewardOption
from incentive.rewards.schemas import (
    ChainOut,
    GrantOut,
    GrantPage,
    OrderIn,
    RebuiltOut,
    ReconcileOut,
    ReportOut,
    ReportRowOut,
    RestockIn,
    RewardOut,
    StepOut,
)
from incentive.stock import StockEngine

router = APIRouter(tags=["rewards"], route_class=JSONBodyRoute)

CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]
RewardCode = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
SEEING = (*AUTHENTICATED, *VALIDATION, NotFound)
MANAGED = (*SEEING, Forbidden)


def _engine(request: Request) -> StockEngine:
    engine: StockEngine = request.app.state.stock
    return engine


def _claims(request: Request) -> Claims:
    claims: Claims = request.app.state.rewards
    return claims


def _not_found(campaign_id: str) -> NotFound:
    return NotFound(f"campaign {campaign_id} is not a reward campaign", campaign_id=campaign_id)


async def _reward_campaign(
    session: Session, principal: Principal, campaign_id: str, *, manage: bool = False
) -> CampaignFacts:
    campaign = await campaigns.visible_campaign(session, principal, campaign_id)
    if campaign.kind != "reward":
        raise _not_found(campaign_id)
    if manage:
        campaign = await campaigns.managed_campaign(session, principal, campaign_id)
    return campaigns.facts(campaign)


def grant_out(grant: RewardGrant) -> GrantOut:
    return GrantOut(
        id=grant.id,
        campaign_id=grant.campaign_id,
        customer_id=grant.customer_id,
        user_type=grant.user_type,
        reward=grant.reward_code,
        type=grant.type,
        delivery=grant.delivery,
        amount=grant.amount,
        state=grant.state,
        delivery_ref=grant.delivery_ref,
        chain=[StepOut.model_validate(s) for s in grant.chain],
        created_at=grant.created_at,
    )


# --------------------------------------------------------------------------- the claim


@router.post(
    "/campaigns/{campaign_id}/rewards/claims",
    name="claim_reward",
    response_model=GrantOut,
    status_code=201,
    responses=problems(
        *SEEING,
        NotRewarding,
        RewardLimitReached,
        NoRewardAvailable,
        IdempotencyConflict,
        ServiceUnavailable,
    ),
)
async def claim(
    campaign_id: CampaignId,
    principal: CustomerOutsideTransaction,
    key: IdempotencyKey,
    request: Request,
) -> JSONResponse:
    """Give the caller the campaign's reward for their user type (`first_time` or
    `returning`): the first reward of the chain that can serve, falling back past those out
    of stock, over their limit, beyond the budget or undeliverable. 201 only once the grant is
    committed; the same `Idempotency-Key` again answers the same grant with
    `Idempotent-Replayed: true`. 409 `no-reward-available` (with each reward's reason in
    `chain`), `reward-limit-reached`, `not-rewarding`; 503 while a reward's stock is rebuilt."""
    claims = _claims(request)
    chain = await claims.chain(campaign_id)
    if chain.campaign.kind != "reward" or not campaigns.can_see(principal, chain.campaign):
        raise _not_found(campaign_id)
    grants.check_rewarding(chain.campaign)
    db: Database = request.app.state.db
    trigger_key = f"claim:{key}"
    try:
        async with db.unit_of_work() as session:
            grant = await grants.give(session, claims.engine, chain, principal.id, trigger_key)
    except grants.Duplicate:
        async with db.unit_of_work() as session:
            found = await grants.find_grant(session, campaign_id, principal.id, trigger_key)
        if found is None:  # pragma: no cover - the twin's grant is committed
            raise ServiceUnavailable("claim conflict; retry with the same key") from None
        return answer(grant_out(found).model_dump(mode="json"), 201, replayed=True)
    return answer(grant_out(grant).model_dump(mode="json"), 201, replayed=False)


@router.get(
    "/me/rewards",
    name="list_my_rewards",
    response_model=GrantPage,
    responses=problems(*AUTHENTICATED, *VALIDATION),
)
async def my_rewards(
    principal: Customer, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> GrantPage:
    """The caller's rewards from every campaign, newest first, each with the chain walked."""
    page = await service.grants_of_customer(session, principal.id, cursor=cursor, limit=limit)
    return GrantPage.of(page, grant_out)


# --------------------------------------------------------------------------- the live chain


async def _reward_out(
    engine: StockEngine, session: Session, item: RewardItem, managing: bool
) -> RewardOut:
    held = (await service.held(session, item.campaign_id, item.code))[0] if managing else None
    return RewardOut(
        code=item.code,
        position=item.position,
        title=item.title,
        type=item.type,
        delivery=item.delivery,
        amount=item.amount,
        audience=item.audience,
        per_user_limit=item.per_user_limit,
        batch_id=item.batch_id,
        stock_total=item.stock_total,
        held=held,
        left=await service.levels(engine, item.campaign_id, item.code),
        low_stock_threshold=item.low_stock_threshold,
        low_since=item.low_since,
        retired_at=item.retired_at,
    )


async def _chain_out(
    request: Request, session: Session, principal: Principal, campaign: CampaignFacts
) -> ChainOut:
    managing = campaigns.can_manage(principal, campaign)
    engine = _engine(request)
    items = await service.items(session, campaign.id, retired=managing)
    return ChainOut(
        campaign_id=campaign.id,
        rewards=[await _reward_out(engine, session, i, managing) for i in items],
    )


@router.get(
    "/campaigns/{campaign_id}/rewards",
    name="get_reward_chain",
    response_model=ChainOut,
    responses=problems(*SEEING),
)
async def get_chain(
    campaign_id: CampaignId, principal: CurrentUser, session: Session, request: Request
) -> ChainOut:
    """The live chain in fallback order with each reward's stock left now (read from the
    stock store). Operators and the owning merchant also see retired rewards and the units
    held by grants. Empty before the campaign's first activation."""
    campaign = await _reward_campaign(session, principal, campaign_id)
    return await _chain_out(request, session, principal, campaign)


@router.post(
    "/campaigns/{campaign_id}/rewards",
    name="add_reward",
    response_model=ChainOut,
    status_code=201,
    responses=problems(*MANAGED, RewardTaken, IdempotencyConflict),
)
@idempotent(status_code=201)
async def add_reward(
    campaign_id: CampaignId,
    body: RewardOption,
    principal: Operator,
    session: Session,
    request: Request,
) -> ChainOut:
    """Add a reward at the end of an active or paused campaign's live chain (operators;
    audited). Its stock is in the stock store when this answers; every process gives it
    within 2 s."""
    campaign = await _live_campaign(session, principal, campaign_id)
    await service.add(session, _engine(request), campaign, body, principal)
    _claims(request).forget(campaign_id)
    return await _chain_out(request, session, principal, campaign)


async def _live_campaign(session: Session, principal: Principal, campaign_id: str) -> CampaignFacts:
    campaign = await _reward_campaign(session, principal, campaign_id, manage=True)
    if campaign.status not in ("active", "paused"):
        raise NotRewarding(
            f"campaign {campaign_id} is {campaign.status}: its chain is changed by editing "
            "its rules before activation",
            campaign_status=campaign.status,
        )
    return campaign


@router.put(
    "/campaigns/{campaign_id}/rewards/order",
    name="reorder_rewards",
    response_model=ChainOut,
    responses=problems(*MANAGED, NotRewarding),
)
async def reorder(
    campaign_id: CampaignId, body: OrderIn, principal: Operator, session: Session, request: Request
) -> ChainOut:
    """Set the fallback order: `codes` lists every live reward once (operators; audited)."""
    campaign = await _live_campaign(session, principal, campaign_id)
    await service.reorder(session, campaign_id, body.codes, principal)
    _claims(request).forget(campaign_id)
    return await _chain_out(request, session, principal, campaign)


@router.post(
    "/campaigns/{campaign_id}/rewards/{code}/restocks",
    name="restock_reward",
    response_model=RewardOut,
    status_code=201,
    responses=problems(*MANAGED, RewardNotFound, NotRewarding, IdempotencyConflict),
)
@idempotent(status_code=201)
async def restock(
    campaign_id: CampaignId,
    code: RewardCode,
    body: RestockIn,
    principal: Operator,
    session: Session,
    request: Request,
) -> RewardOut:
    """Give a reward `units` more (operators; audited; `Idempotency-Key` required). Grants in
    every process can use them as soon as this answers."""
    await _live_campaign(session, principal, campaign_id)
    item = await service.restock(
        session, _engine(request), campaign_id, code, body.units, principal
    )
    return await _reward_out(_engine(request), session, item, True)


@router.delete(
    "/campaigns/{campaign_id}/rewards/{code}",
    name="retire_reward",
    response_model=RewardOut,
    responses=problems(*MANAGED, RewardNotFound, NotRewarding),
)
async def retire(
    campaign_id: CampaignId,
    code: RewardCode,
    principal: Operator,
    session: Session,
    request: Request,
) -> RewardOut:
    """Take a reward out of the chain (operators; audited). Its grants stay on record; the
    last live reward cannot be retired (422)."""
    await _live_campaign(session, principal, campaign_id)
    item = await service.retire(session, campaign_id, code, principal)
    _claims(request).forget(campaign_id)
    return await _reward_out(_engine(request), session, item, True)


@router.post(
    "/campaigns/{campaign_id}/rewards/reconcile",
    name="reconcile_reward_stock",
    response_model=ReconcileOut,
    responses=problems(*MANAGED, ServiceUnavailable),
)
async def reconcile(
    campaign_id: CampaignId, principal: OperatorOutsideTransaction, request: Request
) -> ReconcileOut:
    """Reset every reward pool of the campaign to the database's truth (each reward's total
    minus the grants holding it). Grants answer 503 for `rewards.drain_seconds` meanwhile."""
    db: Database = request.app.state.db
    async with db.unit_of_work() as session:
        await _reward_campaign(session, principal, campaign_id, manage=True)
    done = await stock.reconcile(db, _engine(request), campaign_id)
    return ReconcileOut(
        campaign_id=campaign_id,
        rewards=[
            RebuiltOut(code=r.code, total=r.total, held=r.held, before=r.before, after=r.after)
            for r in done
        ],
    )


# --------------------------------------------------------------------------- reading


@router.get(
    "/campaigns/{campaign_id}/rewards/grants",
    name="list_reward_grants",
    response_model=GrantPage,
    responses=problems(*MANAGED),
)
async def list_grants(
    campaign_id: CampaignId,
    principal: CurrentUser,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> GrantPage:
    """The campaign's grants, newest first, each with the chain it walked: operators and the
    owning merchant see all, a customer their own."""
    await _reward_campaign(session, principal, campaign_id)
    customer = None
    if principal.role == "customer":
        customer = principal.id
    else:
        await campaigns.managed_campaign(session, principal, campaign_id)
    page = await service.grants_of_campaign(
        session, campaign_id, customer_id=customer, cursor=cursor, limit=limit
    )
    return GrantPage.of(page, grant_out)


@router.get(
    "/campaigns/{campaign_id}/rewards/report",
    name="get_reward_report",
    response_model=ReportOut,
    responses=problems(*MANAGED),
)
async def report(campaign_id: CampaignId, principal: CurrentUser, session: Session) -> ReportOut:
    """What was given per day (UTC), reward and user type, with the grants that fell back and
    the rewards skipped counted. Operators and the owning merchant."""
    await _reward_campaign(session, principal, campaign_id, manage=True)
    rows = await service.report(session, campaign_id)
    return ReportOut(
        campaign_id=campaign_id,
        rows=[
            ReportRowOut(
                day=r.day,
                reward=r.reward,
                user_type=r.user_type,
                given=r.given,
                amount=r.amount,
                with_fallback=r.with_fallback,
                fallbacks=r.fallbacks,
            )
            for r in rows
        ],
    )
