"""Rebates over HTTP: a campaign's rebated payments and its report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from incentive.activities import service as activities
from incentive.auth.principal import CurrentUser, Principal
from incentive.campaigns import service as campaigns
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, NotFound, problems
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit
from incentive.rebates import service
from incentive.rebates.schemas import PartsOut, RebateOut, RebatePage, RebateReport

router = APIRouter(prefix="/campaigns", tags=["rebates"], route_class=JSONBodyRoute)

CampaignId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="campaign id")]
SEEING = (*AUTHENTICATED, *VALIDATION, NotFound)


async def _rebate_campaign(session: Session, principal: Principal, campaign_id: str) -> None:
    campaign = await campaigns.visible_campaign(session, principal, campaign_id)
    if campaign.kind != "rebate":
        raise NotFound(f"campaign {campaign_id} is not a rebate campaign", campaign_id=campaign_id)


@router.get(
    "/{campaign_id}/rebates",
    name="list_campaign_rebates",
    response_model=RebatePage,
    responses=problems(*SEEING),
)
async def list_campaign_rebates(
    campaign_id: CampaignId,
    principal: CurrentUser,
    session: Session,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> RebatePage:
    """The campaign's rebated payments, newest first: operators and the owning merchant see
    all; another merchant's staff its merchant's; a customer their own."""
    await _rebate_campaign(session, principal, campaign_id)
    campaign = await campaigns.get_campaign(session, campaign_id)
    merchant = customer = None
    if principal.role == "customer":
        customer = principal.id
    elif not campaigns.can_manage(principal, campaign):
        merchant = principal.merchant_id or "-"
    page = await service.payouts(
        session, campaign_id, merchant=merchant, customer=customer, cursor=cursor, limit=limit
    )
    return RebatePage.of(page, lambda p: RebateOut.model_validate(service.detail_of(p)))


@router.get(
    "/{campaign_id}/rebates/report",
    name="get_rebate_report",
    response_model=RebateReport,
    responses=problems(*SEEING, Forbidden),
)
async def get_rebate_report(
    campaign_id: CampaignId, principal: CurrentUser, session: Session
) -> RebateReport:
    """Payments evaluated, rebated and refused by reason; paid, reversed and shortfall per
    party; budget spent and left. Operators and the owning merchant's staff."""
    await _rebate_campaign(session, principal, campaign_id)
    campaign = await campaigns.managed_campaign(session, principal, campaign_id)
    counts = await activities.outcome_counts(session, campaign_id)
    totals = await service.totals(session, campaign_id)
    budget = await campaigns.budget(session, campaign)
    payments = [c for c in counts if c.type == "payment"]
    refused = {c.reason or "": c.activities for c in payments if c.status == "refused"}
    rebated = sum(c.activities for c in payments if c.status == "rewarded")
    reversals = sum(c.activities for c in counts if c.status == "reversed")
    reversed_total = sum(totals.reversed.values()) - totals.shortfall_fen
    return RebateReport(
        campaign_id=campaign_id,
        payments_evaluated=rebated + sum(refused.values()),
        payments_rebated=rebated,
        refused=refused,
        refunds_reversed=reversals,
        paid=PartsOut(**totals.paid),
        reversed=PartsOut(**totals.reversed),
        refunded_fen=totals.refunded_fen,
        shortfall_fen=totals.shortfall_fen,
        budget_spent_fen=sum(totals.paid.values()) - reversed_total,
        budget_left_fen=budget.balance,
    )
