"""What referrers, payees and operators read of completed referrals: the rewards of a page of
referrals, a payee's rewards, a campaign's referrals and its report.

Contract:

- A campaign's referrals and its report are for those who manage it (operators, the owning
  merchant's staff); another caller gets the 404 of a campaign they cannot see, or 403.
- The report counts referrals by state and rejected ones by reason, the rewards by side,
  level, type and state (count and amount), and reads the budget left and what the escrow
  holds (pending points or cash), all in one transaction.
- Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.db import one_of
from incentive.errors import NotFound
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice
from incentive.ledger import service as ledger
from incentive.referrals.models import Referral, ReferralInvite, ReferralReward
from incentive.referrals.payouts import ESCROW
from incentive.referrals.rules import referral_rules
from incentive.referrals.service import KIND, REFERRAL_ORDER

REWARD_ORDER = Keyset((ReferralReward.created_at, ReferralReward.id), tuple[KeyTime, KeyId])


async def referrer_rewards(
    session: AsyncSession, referrals: list[Referral]
) -> dict[str, ReferralReward]:
    """The referrer's own (level 1) reward of each of ``referrals`` that has one."""
    if not referrals:
        return {}
    found = await session.scalars(
        select(ReferralReward).where(
            one_of(session, ReferralReward.referral_id, [r.id for r in referrals]),
            ReferralReward.side == "referrer",
            ReferralReward.level == 1,
        )
    )
    return {r.referral_id: r for r in found}


async def rewards_of(
    session: AsyncSession, beneficiary_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[ReferralReward]:
    """The rewards paid, held, voided or unpaid to ``beneficiary_id``, newest first."""
    stmt = select(ReferralReward).where(ReferralReward.beneficiary_id == beneficiary_id)
    return await REWARD_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def managed_referral_campaign(
    session: AsyncSession, principal: Principal, campaign_id: str
) -> CampaignFacts:
    """A referral campaign the caller manages (404 unseen or of another kind, 403 seen)."""
    row = await campaigns.managed_campaign(session, principal, campaign_id)
    if row.kind != KIND:
        raise NotFound(f"campaign {campaign_id} is not a referral campaign")
    return campaigns.facts(row)


async def campaign_referrals(
    session: AsyncSession,
    campaign_id: str,
    *,
    state: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[Referral]:
    stmt = select(Referral).where(Referral.campaign_id == campaign_id)
    if state is not None:
        stmt = stmt.where(Referral.state == state)
    return await REFERRAL_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class RewardLine:
    side: str
    level: int
    type: str
    state: str
    count: int
    amount: int


@dataclass(frozen=True)
class Report:
    invites: int
    referrals: dict[str, int]
    rejected: dict[str, int]
    rewards: list[RewardLine]
    asset: str
    budget_left: int
    escrow_held: int


async def report(session: AsyncSession, campaign: CampaignFacts) -> Report:
    invites = await session.scalar(
        select(func.count())
        .select_from(ReferralInvite)
        .where(ReferralInvite.campaign_id == campaign.id)
    )
    by_state = await session.execute(
        select(Referral.state, Referral.reason, func.count())
        .where(Referral.campaign_id == campaign.id)
        .group_by(Referral.state, Referral.reason)
    )
    states: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for state, reason, n in by_state:
        states[state] = states.get(state, 0) + int(n)
        if state == "rejected":
            rejected[reason or ""] = rejected.get(reason or "", 0) + int(n)
    r = ReferralReward
    lines = await session.execute(
        select(r.side, r.level, r.type, r.state, func.count(), func.coalesce(func.sum(r.amount), 0))
        .where(r.campaign_id == campaign.id)
        .group_by(r.side, r.level, r.type, r.state)
        .order_by(r.side, r.level, r.type, r.state)
    )
    asset = referral_rules(campaign).budget_asset
    budget_left = 0
    if campaign.budget_account_id is not None:
        budget_left = (await ledger.get_account(session, campaign.budget_account_id)).balance
    escrow = await ledger.find_account(
        session, owner_type="campaign", owner_id=campaign.id, asset=asset, name=ESCROW
    )
    return Report(
        invites=int(invites or 0),
        referrals=states,
        rejected=rejected,
        rewards=[RewardLine(s, int(lv), t, st, int(n), int(a)) for s, lv, t, st, n, a in lines],
        asset=asset,
        budget_left=budget_left,
        escrow_held=0 if escrow is None else escrow.balance,
    )
