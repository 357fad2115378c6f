"""The task a coupon is locked behind: an activity of the customer (a payment of at least
an amount, a completed task with its code) inside the task window after the claim unlocks
the customer's locked coupons of the campaign."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns.kinds import ActivityFacts, CampaignFacts, Outcome
from incentive.coupons import service
from incentive.coupons.models import Coupon
from incentive.coupons.rules import CouponRules, CouponTask
from incentive.db import one_of

LOCKED = service.LOCKED


def _task_refusal(task: CouponTask | None, activity: ActivityFacts) -> str | None:
    # The kind's ``listens_to`` offers a campaign only its task's activity type.
    if task is None or activity.type != task.activity:
        return "not-the-task"
    if task.activity == "payment" and (activity.amount_fen or 0) < task.min_amount_fen:
        return "below-task-minimum"
    if task.task_code is not None and activity.attributes.get("task_code") != task.task_code:
        return "other-task"
    return None


async def complete_tasks(
    session: AsyncSession, campaign: CampaignFacts, activities: Sequence[ActivityFacts]
) -> list[Outcome]:
    """Unlock the customers' locked coupons of the campaign whose task these activities
    complete (the activity inside the coupon's task window, after its claim): ours become
    ``usable``, a provider's ``activating`` with its issue call written. One outcome per
    activity, in order; a coupon unlocks once (a conditional move from ``received``)."""
    rules = campaign.rules
    assert isinstance(rules, CouponRules)
    refusals = [_task_refusal(rules.task, a) for a in activities]
    doing = [a for a, r in zip(activities, refusals, strict=True) if r is None]
    locked: dict[str, list[Coupon]] = {}
    if doing:
        rows = await session.scalars(
            select(Coupon)
            .where(
                Coupon.campaign_id == campaign.id,
                Coupon.state == LOCKED,
                one_of(session, Coupon.customer_id, sorted({a.customer for a in doing})),
            )
            .order_by(Coupon.claimed_at, Coupon.id)
        )
        for coupon in rows:
            locked.setdefault(coupon.customer_id, []).append(coupon)
    outcomes = []
    for activity, refusal in zip(activities, refusals, strict=True):
        if refusal is not None:
            outcomes.append(Outcome.refused(refusal))
            continue
        due = [
            c
            for c in locked.get(activity.customer, [])
            if c.claimed_at <= activity.occurred_at
            and (c.task_due_at is None or activity.occurred_at <= c.task_due_at)
        ]
        unlocked = await _unlock(session, due, activity)
        for c in due:
            locked[activity.customer].remove(c)
        if unlocked:
            outcomes.append(Outcome("rewarded", None, {"coupons": unlocked}))
        else:
            outcomes.append(Outcome.refused("no-locked-coupon"))
    return outcomes


async def _unlock(
    session: AsyncSession, coupons: list[Coupon], activity: ActivityFacts
) -> list[str]:
    reason = f"task done: {activity.type} {activity.sender}/{activity.external_id}"
    actor = service.Actor(activity.sender[:64], "activity")
    own = [c.id for c in coupons if c.provider_id is None]
    theirs = [c for c in coupons if c.provider_id is not None]
    moved = await service.move_all(session, own, LOCKED, "usable", actor, reason)
    for coupon in theirs:
        if await service.move_all(session, [coupon.id], LOCKED, "activating", actor, reason):
            await service.queue_call(session, "issue", coupon)
            moved.append(coupon.id)
    return moved
