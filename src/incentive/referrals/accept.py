"""A referee accepts an invite: by signing up with it, explicitly, or through a partner's
``signup`` activity carrying ``attributes.invite``.

Contract:

- The invite must exist and be within its attribution window (404 ``invite-not-found``) and
  its campaign active (409 ``referrals-closed``); refusals write nothing.
- Accepting the same invite again answers the first referral (one row per invite and
  referee, unique) — unless it was rejected for a passing reason (``TEMPORARY``: a cap, an
  address burst, an ineligible referrer): then the checks run again and the same row becomes
  ``accepted``, or keeps ``rejected`` with the reason that applies now.
- Otherwise a referral is stored, ``accepted`` or ``rejected`` with the first reason that
  applies, in this order: ``referrer-ineligible`` (the referrer is blocked or gone, or no
  longer of a role the rules let refer, since making the invite), ``self-referral`` (the
  referrer themself, or a device, phone or payment-instrument hash the referrer presented
  too), ``ring`` (the referee is the referrer's referrer, or theirs, … in this campaign),
  ``already-referred`` (the referee has a winning referral in this campaign: the first valid
  invite wins), ``existing-account`` (the referee's account is older than the invite),
  ``referrer-cap`` (the referrer's ``max_referrals_per_user`` or ``max_referrals_per_day`` is
  reached), ``address-burst`` (live ``referrals.max_referees_per_address_hour`` acceptances
  from the client's address — an IPv6 one by its /64 — in this campaign this UTC hour; not
  checked when no client address is known).
- The caps and the address count grow with one conditional upsert each, and the accepted row
  is inserted, in one savepoint: a cap reached, or another invite of the same referee winning
  concurrently (partial unique index on (campaign, referee) of the rows not rejected), rolls
  all of it back and the referral is stored rejected. A rejected row taken again is updated
  only while it is still rejected (``WHERE state = 'rejected'``), inside that savepoint: two
  acceptances of it at once take it once. So one referrer per referee per campaign and no
  cap is passed, whatever the concurrency.
- Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnClause, Select, Table, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CampaignFacts
from incentive.config import live_config
from incentive.db import insert as db_insert
from incentive.db import new_id, per_dialect, utcnow
from incentive.referrals import counters
from incentive.referrals.errors import ReferralsClosed
from incentive.referrals.keys import MAX_REFEREES_PER_ADDRESS_HOUR
from incentive.referrals.models import Referral, ReferralInvite, ReferralSignal
from incentive.referrals.rules import referral_rules
from incentive.referrals.service import ALL, by_token, day_of, referrer_subject, role_refusal

#: how far up the chain of referrers the ring check looks
RING_DEPTH = 10
_SIGNALS = cast(Table, ReferralSignal.__table__)
#: reasons that pass (a new day, a quieter hour, a referrer unblocked): checked again when
#: the referee accepts the same invite again; any other rejection is final
TEMPORARY = frozenset({"referrer-cap", "address-burst", "referrer-ineligible"})
#: the winning rows, as the partial unique index's predicate spells it: a literal, so that
#: PostgreSQL proves the index usable in a generic (prepared) plan too
NOT_REJECTED: ColumnClause[str] = literal_column("'rejected'")


@dataclass(frozen=True)
class Evidence:
    """What the acceptance's caller presented: peppered hashes of device, phone and payment
    instrument (``signals``, by kind), and of the client's address."""

    signals: Mapping[str, str] = field(default_factory=dict)
    address_hash: str | None = None


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@per_dialect
def _signal_statement(dialect: str) -> Any:
    return db_insert(dialect, _SIGNALS).on_conflict_do_nothing(
        index_elements=["user_id", "kind", "hash"]
    )


async def record_signals(session: AsyncSession, user_id: str, signals: Mapping[str, str]) -> None:
    """Keep the hashes a user presented (once each), for later self-referral checks."""
    if not signals:
        return
    now = utcnow()
    await session.execute(
        _signal_statement(session),
        [{"user_id": user_id, "kind": k, "hash": h, "seen_at": now} for k, h in signals.items()],
    )


async def _count(
    session: AsyncSession, campaign_id: str, subject: str, period: str, cap: int
) -> None:
    if not await counters.take(session, campaign_id, subject, period, cap):
        raise _Refused("address-burst" if subject.startswith("address:") else "referrer-cap")


async def _shares_signal(session: AsyncSession, referrer_id: str, referee_id: str) -> bool:
    a, b = ReferralSignal.__table__.alias("a"), ReferralSignal.__table__.alias("b")
    found = await session.execute(
        select(a.c.kind)
        .join(b, (a.c.kind == b.c.kind) & (a.c.hash == b.c.hash))
        .where(a.c.user_id == referrer_id, b.c.user_id == referee_id)
        .limit(1)
    )
    return found.first() is not None


def winner_statement(campaign_id: str, referee_id: str) -> Select[Referral]:
    return select(Referral).where(
        Referral.campaign_id == campaign_id,
        Referral.referee_id == referee_id,
        Referral.state != NOT_REJECTED,
    )


async def winner(session: AsyncSession, campaign_id: str, referee_id: str) -> Referral | None:
    """The referee's winning (not rejected) referral in the campaign."""
    found: Referral | None = await session.scalar(winner_statement(campaign_id, referee_id))
    return found


async def _in_chain(
    session: AsyncSession, campaign_id: str, referrer_id: str, referee_id: str
) -> bool:
    """Whether ``referee_id`` referred ``referrer_id`` (directly or up the chain)."""
    current = referrer_id
    for _ in range(RING_DEPTH):
        parent = await winner(session, campaign_id, current)
        if parent is None:
            return False
        if parent.referrer_id == referee_id:
            return True
        current = parent.referrer_id
    return False


async def _referrer_eligible(
    session: AsyncSession, invite: ReferralInvite, campaign: CampaignFacts
) -> bool:
    """Whether the invite's referrer may still refer: there, not blocked, of the role they
    invited as, and that role (and merchant) still allowed by the rules."""
    card = (await auth.user_cards(session, [invite.referrer_id])).get(invite.referrer_id)
    if card is None or card.blocked or card.role != invite.referrer_role:
        return False
    principal = Principal(card.id, card.display_name, card.role, card.merchant_id)
    return role_refusal(principal, campaign) is None


async def _reason(
    session: AsyncSession,
    invite: ReferralInvite,
    campaign: CampaignFacts,
    referee_id: str,
    referee_created_at: datetime,
) -> str | None:
    if not await _referrer_eligible(session, invite, campaign):
        return "referrer-ineligible"
    if referee_id == invite.referrer_id:
        return "self-referral"
    if await _shares_signal(session, invite.referrer_id, referee_id):
        return "self-referral"
    # Before existing-account: whoever referred the referrer had an account before, so a
    # ring would otherwise always read as an old account.
    if await _in_chain(session, invite.campaign_id, invite.referrer_id, referee_id):
        return "ring"
    # Before existing-account: telling a referrer the referee was referred already says more.
    if await winner(session, invite.campaign_id, referee_id) is not None:
        return "already-referred"
    if referee_created_at < invite.created_at:
        return "existing-account"
    return None


async def _existing(session: AsyncSession, invite_id: str, referee_id: str) -> Referral | None:
    found: Referral | None = await session.scalar(
        select(Referral)
        .where(Referral.invite_id == invite_id, Referral.referee_id == referee_id)
        .execution_options(populate_existing=True)
    )
    return found


class _Taken(Exception):
    """The rejected row was taken again by a concurrent acceptance meanwhile."""


async def _take_again(session: AsyncSession, row: Referral, values: Mapping[str, Any]) -> None:
    """Update ``row`` (rejected) with ``values`` while it is still rejected (else _Taken)."""
    done = await session.execute(
        update(Referral)
        .where(Referral.id == row.id, Referral.state == "rejected")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if cast(Any, done).rowcount != 1:
        raise _Taken
    await session.flush()


async def accept(
    session: AsyncSession,
    token: str,
    referee_id: str,
    referee_created_at: datetime,
    via: str,
    evidence: Evidence | None = None,
) -> Referral:
    """Accept the invite for the referee (see the module contract); the referral."""
    evidence = evidence or Evidence()
    now = utcnow()
    invite = await by_token(session, token, now)
    campaign = await campaigns.campaign_facts(session, invite.campaign_id)
    if campaign.status != "active":
        raise ReferralsClosed(
            f"a {campaign.status} campaign takes no referrals", reason="not-active"
        )
    found = await _existing(session, invite.id, referee_id)
    if found is not None and not (found.state == "rejected" and found.reason in TEMPORARY):
        return found
    await record_signals(session, referee_id, evidence.signals)
    rules = referral_rules(campaign)
    values: dict[str, Any] = {
        "via": via,
        "address_hash": evidence.address_hash,
        "updated_at": now,
    }
    if found is None:
        values.update(
            campaign_id=campaign.id,
            invite_id=invite.id,
            referrer_id=invite.referrer_id,
            referee_id=referee_id,
            created_at=now,
        )
    reason = await _reason(session, invite, campaign, referee_id, referee_created_at)
    if reason is None:
        parent = await winner(session, campaign.id, invite.referrer_id)
        taken = {
            "state": "accepted",
            "reason": None,
            "parent_id": None if parent is None else parent.id,
            "business_due_at": now + timedelta(days=rules.business.within_days),
            **values,
        }
        try:
            async with session.begin_nested():
                subject = referrer_subject(invite.referrer_id)
                await _count(session, campaign.id, subject, ALL, rules.max_referrals_per_user)
                if rules.max_referrals_per_day is not None:
                    daily = rules.max_referrals_per_day
                    await _count(session, campaign.id, subject, day_of(now), daily)
                if evidence.address_hash is not None:
                    cap = live_config.get(MAX_REFEREES_PER_ADDRESS_HOUR)
                    address = f"address:{evidence.address_hash}"
                    await _count(session, campaign.id, address, now.strftime("%Y-%m-%dT%H"), cap)
                if found is None:
                    session.add(Referral(id=new_id(), **taken))
                    await session.flush()
                else:
                    await _take_again(session, found, taken)
        except _Refused as refused:
            reason = refused.reason
        except _Taken:
            pass
        except IntegrityError:
            # Another acceptance of this referee won meanwhile (this invite, or another one).
            made = None if found is not None else await _existing(session, invite.id, referee_id)
            if made is not None:
                return made
            reason = "already-referred"
        if reason is None:  # stored, or taken again (by this acceptance or a concurrent one)
            made = await _existing(session, invite.id, referee_id)
            assert made is not None, "the referral was stored or taken"
            return made
    if found is not None:
        try:
            async with session.begin_nested():
                await _take_again(session, found, {"reason": reason, **values})
        except _Taken:
            pass
        refreshed = await _existing(session, invite.id, referee_id)
        assert refreshed is not None
        return refreshed
    rejected = Referral(id=new_id(), state="rejected", reason=reason, **values)
    try:
        async with session.begin_nested():
            session.add(rejected)
            await session.flush()
    except IntegrityError:
        found = await _existing(session, invite.id, referee_id)
        assert found is not None, "a referral of this invite and referee was there"
        return found
    return rejected
