"""The referee's business completes a referral; a refund in the hold voids it; held
rewards are released when the hold ends.

Contract:

- An activity of the rules' ``business.activity_type`` (a payment of at least
  ``business.min_amount_fen``) by a referee whose referral in this campaign is ``accepted``
  (or ``expired`` — the expiry job only labels it — when the activity occurred in the window)
  and that occurred between the acceptance (less ``CLOCK_SKEW``: senders' clocks are not ours)
  and ``business_due_at`` completes it: one
  conditional ``UPDATE referrals … WHERE state IN ('accepted', 'expired')``. Only the
  activity that wins it pays (``payouts.give``), so any number of concurrent completions of one
  referral give one set of rewards. The outcome is ``rewarded`` (paid or held: a refund of the
  payment then follows it here) with the referral's new state, or ``refused`` with why:
  ``below-minimum``, ``not-referred``, ``already-completed``, ``before-acceptance``,
  ``business-window-passed``, ``budget-exhausted`` or a coupon's refusal such as
  ``out-of-stock`` (completed, nothing paid), or
  ``other-merchant``: a merchant's campaign counts business done at that merchant only (as
  rewards and sharing do), a platform campaign business anywhere.
- The referral then is ``rewarded`` (paid at once), ``pending`` until ``release_at`` (hold
  days after the completion), or ``completed`` when no points or cash could be paid and no
  coupon was given, with the first payee's reason (``budget-exhausted``, ``out-of-stock``, …).
- A refund of the completing payment adds to ``refunded_fen``; when what is left falls below
  ``max(business.min_amount_fen, 1)`` and ``void_on_refund``, a ``pending`` referral still in
  its hold (``release_at`` not reached) becomes ``voided`` (reason ``refunded``, one
  conditional update) and its held rewards go back to the budget (outcome ``reversed``). Paid
  rewards are not taken back (``already-paid``), nor are those whose hold ended and wait for
  the release job (``hold-ended``: how late the job runs does not decide it).
- ``release_due`` moves each ``pending`` referral past ``release_at`` to ``rewarded`` (one
  conditional update, so a refund racing it voids it or finds it paid, never both) and pays
  it; ``expire_due`` labels accepted referrals past their window ``expired``.
- Nothing here commits (the jobs commit one referral at a time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CLOCK_SKEW, ActivityFacts, CampaignFacts, Outcome
from incentive.db import one_of, utcnow
from incentive.referrals.accept import NOT_REJECTED
from incentive.referrals.models import Referral, ReferralReward
from incentive.referrals.payouts import give, release, void
from incentive.referrals.rules import referral_rules

OPEN = ("accepted", "expired")
RELEASE_PAGE = 100


def _rewards(rows: list[ReferralReward]) -> list[dict[str, Any]]:
    return [
        {
            "beneficiary": r.beneficiary_id,
            "side": r.side,
            "level": r.level,
            "type": r.type,
            "amount": r.amount,
            "state": r.state,
            "reason": r.reason,
        }
        for r in rows
    ]


async def referred(
    session: AsyncSession, campaign_id: str, customers: list[str]
) -> dict[str, Referral]:
    """The winning (not rejected) referral of each of ``customers`` in the campaign."""
    if not customers:
        return {}
    found = await session.scalars(
        select(Referral).where(
            Referral.campaign_id == campaign_id,
            one_of(session, Referral.referee_id, sorted(set(customers))),
            Referral.state != NOT_REJECTED,  # a literal: the partial unique index serves it
        )
    )
    return {r.referee_id: r for r in found}


async def lock_open(session: AsyncSession, referrals: list[Referral]) -> None:
    """Lock the open ones of a batch's ``referrals`` in id order before any is paid: each
    completion locks its referral and then the budget, so two batches completing the same
    referrals in other orders would otherwise deadlock (PostgreSQL; SQLite has one writer)."""
    ids = sorted(r.id for r in referrals if r.state in OPEN)
    if len(ids) > 1:
        await session.execute(
            select(Referral.id)
            .where(one_of(session, Referral.id, ids), Referral.state.in_(OPEN))
            .order_by(Referral.id)
            .with_for_update()
        )


async def complete(
    session: AsyncSession,
    campaign: CampaignFacts,
    activity: ActivityFacts,
    referral: Referral | None,
) -> Outcome:
    """Answer a business activity (see the contract); ``referral`` is the customer's
    winning referral here (None: not referred)."""
    rules = referral_rules(campaign)
    if (
        campaign.owner_type == "merchant"
        and activity.merchant is not None
        and activity.merchant != campaign.merchant_id
    ):
        return Outcome.refused("other-merchant")
    if (activity.amount_fen or 0) < rules.business.min_amount_fen:
        return Outcome.refused("below-minimum")
    if referral is None:
        return Outcome.refused("not-referred")
    if referral.state not in OPEN:
        return Outcome.refused("already-completed", referral_id=referral.id)
    if activity.occurred_at < referral.created_at - CLOCK_SKEW:
        return Outcome.refused("before-acceptance", referral_id=referral.id)
    if referral.business_due_at is None or activity.occurred_at > referral.business_due_at:
        return Outcome.refused("business-window-passed", referral_id=referral.id)
    now = utcnow()
    won = await session.scalar(
        update(Referral)
        .where(Referral.id == referral.id, Referral.state.in_(OPEN))
        .values(
            state="completed",
            reason=None,
            completed_at=now,
            completed_by=str(activity.id),
            business_amount_fen=activity.amount_fen,
            updated_at=now,
        )
        .returning(Referral.id)
        .execution_options(synchronize_session=False)
    )
    if won is None:
        return Outcome.refused("already-completed", referral_id=referral.id)
    await session.refresh(referral)
    rows = await give(session, campaign, rules, referral, now)
    given = [r for r in rows if r.state in ("paid", "pending")]
    if not given:
        # Why nothing was given: the budget, or the coupon's own refusal (out-of-stock, ...).
        state, reason = "completed", next((r.reason for r in rows if r.reason), "budget-exhausted")
    elif rules.hold_days:
        state, reason = "pending", None
    else:
        state, reason = "rewarded", None
    referral.state, referral.reason = state, reason
    if state == "pending":
        referral.release_at = now + timedelta(days=rules.hold_days)
    await session.flush()
    detail = {"referral_id": referral.id, "state": state, "rewards": _rewards(rows)}
    if not given:
        return Outcome.refused(reason or "budget-exhausted", **detail)
    return Outcome("rewarded", None, detail)


async def refund(
    session: AsyncSession, campaign: CampaignFacts, activity: ActivityFacts
) -> Outcome:
    """Answer a refund of a payment (see the contract)."""
    rules = referral_rules(campaign)
    bumped = (
        await session.execute(
            update(Referral)
            .where(
                Referral.campaign_id == campaign.id,
                Referral.completed_by == str(activity.refers_to),
            )
            .values(refunded_fen=Referral.refunded_fen + (activity.amount_fen or 0))
            .returning(Referral.id, Referral.refunded_fen, Referral.business_amount_fen)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if bumped is None:
        return Outcome.refused("not-the-business")
    referral_id, refunded, amount = bumped
    detail = {"referral_id": referral_id, "refunded_fen": refunded}
    if (amount or 0) - refunded >= max(rules.business.min_amount_fen, 1):
        return Outcome.refused("still-qualifies", **detail)
    if not rules.void_on_refund:
        return Outcome.refused("void-off", **detail)
    now = utcnow()
    voided = await session.scalar(
        update(Referral)
        .where(Referral.id == referral_id, Referral.state == "pending", Referral.release_at > now)
        .values(state="voided", reason="refunded", updated_at=now)
        .returning(Referral.id)
        .execution_options(synchronize_session=False)
    )
    if voided is None:
        state = await session.scalar(select(Referral.state).where(Referral.id == referral_id))
        if state == "pending":
            return Outcome.refused("hold-ended", **detail)
        return Outcome.refused("already-paid" if state == "rewarded" else f"referral-{state}")
    rows = await void(session, campaign, rules, referral_id)
    return Outcome("reversed", None, {**detail, "state": "voided", "rewards": _rewards(rows)})


async def due_for_release(
    connection: AsyncConnection, now: datetime, after: tuple[datetime, str] | None = None
) -> list[tuple[datetime, str]]:
    """Up to a page of held referrals due for release, ``(release_at, id)`` in that order,
    after ``after`` (the last of the previous page: a referral whose release failed is not
    read again in this run, so failures cannot keep a run paging forever). Read on a reader
    connection."""
    stmt = select(Referral.release_at, Referral.id).where(
        Referral.state == "pending", Referral.release_at <= now
    )
    if after is not None:
        at, last = after
        stmt = stmt.where(
            or_(
                Referral.release_at > at,
                and_(Referral.release_at == at, Referral.id > last),
            )
        )
    found = await connection.execute(
        stmt.order_by(Referral.release_at, Referral.id).limit(RELEASE_PAGE)
    )
    return [(at, referral_id) for at, referral_id in found if at is not None]


async def release_one(session: AsyncSession, referral_id: str, now: datetime) -> bool:
    """Release one held referral if it is still ``pending`` and due (see the contract)."""
    won = await session.scalar(
        update(Referral)
        .where(Referral.id == referral_id, Referral.state == "pending", Referral.release_at <= now)
        .values(state="rewarded", updated_at=now)
        .returning(Referral.campaign_id)
        .execution_options(synchronize_session=False)
    )
    if won is None:
        return False
    campaign = await campaigns.campaign_facts(session, won)
    await release(session, campaign, referral_rules(campaign), referral_id)
    return True


async def expire_due(session: AsyncSession, now: datetime) -> int:
    """Label accepted referrals whose business window passed ``expired``; how many."""
    result = await session.execute(
        update(Referral)
        .where(Referral.state == "accepted", Referral.business_due_at < now)
        .values(state="expired", reason="business-window-passed", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
