"""A referee accepts an invite: by signing up with it, explicitly, or through a partner's
``signup`` activity carrying ``attributes.invite``.

Contract:

- The invite must exist and be within its attribution window (404 ``invite-not-found``) and
  its campaign active (409 ``referrals-closed``); refusals write nothing.
- Accepting the same invite again answers the first referral (one row per invite and
  referee, unique).
- Otherwise a referral is stored, ``accepted`` or ``rejected`` with the first reason that
  applies, in this order: ``self-referral`` (the referrer themself, or a device, phone or
  payment-instrument hash the referrer presented too), ``ring`` (the referee is the
  referrer's referrer, or theirs, … in this campaign), ``existing-account`` (the referee's
  account is older than the invite), ``already-referred`` (the referee has a winning referral in
  this campaign: the first valid invite wins), ``referrer-cap`` (the referrer's
  ``max_referrals_per_user`` or ``max_referrals_per_day`` is reached), ``address-burst`` (live
  ``referrals.max_referees_per_address_hour`` acceptances from the client's address in this
  campaign this UTC hour).
- The caps and the address count grow with one conditional upsert each, and the accepted row
  is inserted, in one savepoint: a cap reached, or another invite of the same referee winning
  concurrently (partial unique index on (campaign, referee) of the rows not rejected), rolls
  all of it back and the referral is stored rejected. So one referrer per referee per
  campaign and no cap is passed, whatever the concurrency.
- Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import service as campaigns
from incentive.config import live_config
from incentive.db import insert as db_insert
from incentive.db import new_id, utcnow
from incentive.referrals.errors import ReferralsClosed
from incentive.referrals.keys import MAX_REFEREES_PER_ADDRESS_HOUR
from incentive.referrals.models import Referral, ReferralCount, ReferralInvite, ReferralSignal
from incentive.referrals.rules import referral_rules
from incentive.referrals.service import ALL, by_token, day_of, referrer_subject

#: how far up the chain of referrers the ring check looks
RING_DEPTH = 10
_COUNTS = cast(Table, ReferralCount.__table__)
_SIGNALS = cast(Table, ReferralSignal.__table__)
_COUNT: dict[str, Any] = {}
_SIGNAL: dict[str, Any] = {}


@dataclass(frozen=True)
class Evidence:
    """What the acceptance's caller presented: peppered hashes of device, phone and payment
    instrument (``signals``, by kind), and of the client's address."""

    signals: Mapping[str, str] = field(default_factory=dict)
    address_hash: str | None = None


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _count_statement(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect not in _COUNT:
        c = _COUNTS.c
        _COUNT[dialect] = (
            db_insert(dialect, _COUNTS)
            .values(
                campaign_id=bindparam("campaign"),
                subject=bindparam("subject"),
                period=bindparam("period"),
                n=1,
            )
            .on_conflict_do_update(
                index_elements=["campaign_id", "subject", "period"],
                set_={"n": c.n + 1},
                where=c.n < bindparam("cap"),
            )
            .returning(c.n)
        )
    return _COUNT[dialect]


def _signal_statement(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect not in _SIGNAL:
        _SIGNAL[dialect] = db_insert(dialect, _SIGNALS).on_conflict_do_nothing(
            index_elements=["user_id", "kind", "hash"]
        )
    return _SIGNAL[dialect]


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
    params = {"campaign": campaign_id, "subject": subject, "period": period, "cap": cap}
    if cap < 1 or (await session.execute(_count_statement(session), params)).first() is None:
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


async def winner(session: AsyncSession, campaign_id: str, referee_id: str) -> Referral | None:
    """The referee's winning (not rejected) referral in the campaign."""
    found: Referral | None = await session.scalar(
        select(Referral).where(
            Referral.campaign_id == campaign_id,
            Referral.referee_id == referee_id,
            Referral.state != "rejected",
        )
    )
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


async def _reason(
    session: AsyncSession, invite: ReferralInvite, referee_id: str, referee_created_at: datetime
) -> str | None:
    if referee_id == invite.referrer_id:
        return "self-referral"
    if await _shares_signal(session, invite.referrer_id, referee_id):
        return "self-referral"
    # Before existing-account: whoever referred the referrer had an account before, so a
    # ring would otherwise always read as an old account.
    if await _in_chain(session, invite.campaign_id, invite.referrer_id, referee_id):
        return "ring"
    if referee_created_at < invite.created_at:
        return "existing-account"
    if await winner(session, invite.campaign_id, referee_id) is not None:
        return "already-referred"
    return None


async def _existing(session: AsyncSession, invite_id: str, referee_id: str) -> Referral | None:
    found: Referral | None = await session.scalar(
        select(Referral)
        .where(Referral.invite_id == invite_id, Referral.referee_id == referee_id)
        .execution_options(populate_existing=True)
    )
    return found


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
    if found is not None:
        return found
    await record_signals(session, referee_id, evidence.signals)
    rules = referral_rules(campaign)
    values: dict[str, Any] = {
        "campaign_id": campaign.id,
        "invite_id": invite.id,
        "referrer_id": invite.referrer_id,
        "referee_id": referee_id,
        "via": via,
        "address_hash": evidence.address_hash,
        "created_at": now,
        "updated_at": now,
    }
    reason = await _reason(session, invite, referee_id, referee_created_at)
    if reason is None:
        parent = await winner(session, campaign.id, invite.referrer_id)
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
                row = Referral(
                    id=new_id(),
                    state="accepted",
                    parent_id=None if parent is None else parent.id,
                    business_due_at=now + timedelta(days=rules.business.within_days),
                    **values,
                )
                session.add(row)
                await session.flush()
            return row
        except _Refused as refused:
            reason = refused.reason
        except IntegrityError:
            # Another acceptance of this referee won meanwhile (this invite, or another one).
            found = await _existing(session, invite.id, referee_id)
            if found is not None:
                return found
            reason = "already-referred"
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
