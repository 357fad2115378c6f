"""Referrals: who may refer, invites, and what referrers see.

Contract:

- A referrer may invite for an **active** referral campaign (409 ``referrals-closed``
  otherwise; a campaign the caller cannot see is a 404) when the rules allow them (403
  ``may-not-refer`` with ``reason``): their role is in ``referrer_roles`` (merchant staff: of
  the campaign's merchant, any merchant's for a platform campaign; operators and partners
  never) — ``role``; their account is at least ``min_account_age_days`` old —
  ``account-age``; they have fewer accepted referrals than ``max_referrals_per_user`` in the
  campaign — ``campaign-cap`` — and than ``max_referrals_per_day`` today (UTC) —
  ``daily-cap``. The caps are only read here; acceptances count them atomically
  (``accept.py``), so a referrer never passes them whatever the concurrency.
- A referrer makes at most live ``referrals.max_invites_per_referrer_day`` invites per
  campaign per UTC day (403 ``may-not-refer``, ``reason`` ``invite-cap``), counted atomically
  (``counters``) when the invite is made.
- An invite's token is 16 URL-safe characters (96 random bits); it can be accepted until
  ``attribution_days`` after it was made.
- ``GET /me/referral-campaigns`` pages the active referral campaigns (newest first) and keeps
  those the caller may refer in now; a page may hold fewer than ``limit`` (its cursor goes on).
- Nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.config import live_config
from incentive.db import new_id, utcnow
from incentive.kit.codes import public_token
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice
from incentive.referrals import counters
from incentive.referrals.errors import InviteNotFound, MayNotRefer, ReferralsClosed
from incentive.referrals.keys import MAX_INVITES_PER_REFERRER_DAY
from incentive.referrals.models import Referral, ReferralCount, ReferralInvite
from incentive.referrals.rules import ReferralRules, referral_rules

KIND = "referral"
ALL = "all"


def day_of(at: datetime) -> str:
    return at.date().isoformat()


def referrer_subject(referrer_id: str) -> str:
    return f"referrer:{referrer_id}"


# --------------------------------------------------------------------------- participation


@dataclass(frozen=True)
class Refusal:
    reason: str
    rule: str
    detail: str


def role_refusal(principal: Principal, campaign: CampaignFacts) -> Refusal | None:
    rules = referral_rules(campaign)
    allowed = principal.role in rules.referrer_roles
    if allowed and principal.role == "merchant":
        allowed = campaign.owner_type != "merchant" or principal.merchant_id == campaign.merchant_id
    if allowed:
        return None
    return Refusal("role", "referrer_roles", f"{principal.role} may not refer for this campaign")


async def _counts(
    session: AsyncSession, campaign_id: str, referrer_id: str, day: str
) -> dict[str, int]:
    rows = await session.execute(
        select(ReferralCount.period, ReferralCount.n).where(
            ReferralCount.campaign_id == campaign_id,
            ReferralCount.subject == referrer_subject(referrer_id),
            ReferralCount.period.in_((ALL, day)),
        )
    )
    return {str(period): int(n) for period, n in rows}


async def refusal(
    session: AsyncSession,
    principal: Principal,
    campaign: CampaignFacts,
    now: datetime,
    created_at: datetime | None = None,
) -> Refusal | None:
    """Why the caller may not refer for ``campaign`` now (None: they may)."""
    rules = referral_rules(campaign)
    found = role_refusal(principal, campaign)
    if found is not None:
        return found
    if created_at is None:
        card = (await auth.user_cards(session, [principal.id])).get(principal.id)
        if card is None:
            return Refusal("role", "referrer_roles", "only a user may refer")
        created_at = card.created_at
    if created_at > now - timedelta(days=rules.min_account_age_days):
        return Refusal(
            "account-age",
            "min_account_age_days",
            f"the account must be at least {rules.min_account_age_days} days old",
        )
    counts = await _counts(session, campaign.id, principal.id, day_of(now))
    if counts.get(ALL, 0) >= rules.max_referrals_per_user:
        return Refusal("campaign-cap", "max_referrals_per_user", "the campaign's cap is reached")
    if rules.max_referrals_per_day is not None and counts.get(day_of(now), 0) >= (
        rules.max_referrals_per_day
    ):
        return Refusal("daily-cap", "max_referrals_per_day", "today's cap is reached")
    return None


async def referral_campaign(
    session: AsyncSession, principal: Principal, campaign_id: str
) -> CampaignFacts:
    """An active referral campaign the caller sees (404 unseen, 409 otherwise)."""
    campaign = campaigns.facts(await campaigns.visible_campaign(session, principal, campaign_id))
    if campaign.kind != KIND:
        raise ReferralsClosed(
            f"a {campaign.kind} campaign takes no referrals", reason="not-a-referral-campaign"
        )
    if campaign.status != "active":
        raise ReferralsClosed(
            f"a {campaign.status} campaign takes no referrals", reason="not-active"
        )
    return campaign


async def open_campaigns(
    session: AsyncSession, principal: Principal, *, cursor: str | None = None, limit: int = 50
) -> Slice[CampaignFacts]:
    """The active referral campaigns the caller may refer in now (see the contract)."""
    page = await campaigns.list_campaigns(
        session, principal, status="active", kind=KIND, cursor=cursor, limit=limit
    )
    now = utcnow()
    card = (await auth.user_cards(session, [principal.id])).get(principal.id)
    kept: list[CampaignFacts] = []
    for row in page.items:
        campaign = campaigns.facts(row)
        if card is None or campaign.ends_at <= now:
            continue
        if await refusal(session, principal, campaign, now, card.created_at) is None:
            kept.append(campaign)
    return Slice(kept, page.next_cursor)


# --------------------------------------------------------------------------- invites


async def invite(session: AsyncSession, principal: Principal, campaign_id: str) -> ReferralInvite:
    """Make an invite of the caller for the campaign (see the contract)."""
    campaign = await referral_campaign(session, principal, campaign_id)
    now = utcnow()
    refused = await refusal(session, principal, campaign, now)
    if refused is not None:
        raise MayNotRefer(refused.detail, reason=refused.reason, rule=f"rules.{refused.rule}")
    cap = live_config.get(MAX_INVITES_PER_REFERRER_DAY)
    if not await counters.take(session, campaign.id, f"invites:{principal.id}", day_of(now), cap):
        raise MayNotRefer(
            f"at most {cap} invites a day in this campaign",
            reason="invite-cap",
            rule=MAX_INVITES_PER_REFERRER_DAY.name,
        )
    rules: ReferralRules = referral_rules(campaign)
    row = ReferralInvite(
        id=new_id(),
        token=public_token(),
        campaign_id=campaign.id,
        referrer_id=principal.id,
        referrer_role=principal.role,
        created_at=now,
        expires_at=now + timedelta(days=rules.attribution_days),
    )
    session.add(row)
    await session.flush()
    return row


async def by_token(
    session: AsyncSession, token: str, now: datetime | None = None
) -> ReferralInvite:
    """The invite named by ``token`` that can still be accepted (404 unknown or expired)."""
    found = await session.scalar(select(ReferralInvite).where(ReferralInvite.token == token))
    if found is None:
        raise InviteNotFound(f"no invite {token!r}", reason="unknown")
    if (now or utcnow()) >= found.expires_at:
        raise InviteNotFound(f"invite {token!r} expired", reason="expired")
    return found


@dataclass(frozen=True)
class InviteCard:
    """An invite as a referee sees it: the campaign's name and the inviter's shown name."""

    token: str
    campaign_name: str
    task_title: str
    inviter: str
    expires_at: datetime


async def invite_card(session: AsyncSession, token: str) -> InviteCard:
    found = await by_token(session, token)
    campaign = await campaigns.campaign_facts(session, found.campaign_id)
    if campaign.status != "active":
        raise InviteNotFound(f"invite {token!r} is of a closed campaign", reason="closed")
    card = (await auth.user_cards(session, [found.referrer_id])).get(found.referrer_id)
    return InviteCard(
        token=found.token,
        campaign_name=campaign.name,
        task_title=referral_rules(campaign).task_title,
        inviter=card.display_name if card else "",
        expires_at=found.expires_at,
    )


INVITE_ORDER = Keyset((ReferralInvite.created_at, ReferralInvite.id), tuple[KeyTime, KeyId])
REFERRAL_ORDER = Keyset((Referral.created_at, Referral.id), tuple[KeyTime, KeyId])


async def invites_of(
    session: AsyncSession, referrer_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[ReferralInvite]:
    """The referrer's invites of every campaign, newest first."""
    stmt = select(ReferralInvite).where(ReferralInvite.referrer_id == referrer_id)
    return await INVITE_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def referrals_of(
    session: AsyncSession, referrer_id: str, *, cursor: str | None = None, limit: int = 50
) -> tuple[Slice[Referral], dict[str, auth.UserCard]]:
    """The referrer's referrals (accepted and rejected), newest first, and their referees."""
    stmt = select(Referral).where(Referral.referrer_id == referrer_id)
    page = await REFERRAL_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)
    return page, await auth.user_cards(session, [r.referee_id for r in page.items])
