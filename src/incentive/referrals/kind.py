"""The ``referral`` campaign kind: its rules (``rules.py``), its budget asset, and the
``signup`` activity a partner reports for a referee who signed up on its side with an invite
(``attributes.invite``: the token).

- ``on_create`` / ``on_edit``: a coupon reward's batch must exist (422
  ``rules.<side>_reward.coupon_batch_id``).
- ``on_activity`` (``signup``): only the invite's own campaign acts (others answer
  ``other-campaign``); the customer accepts the invite (``accept.accept``, ``via`` activity)
  and the outcome says what became of it: ``referral-accepted`` or ``referral-rejected``
  with the referral and its reason. Nothing is given at acceptance (the outcome's status is
  ``refused``, the activities table's word for "gave nothing"); rewards come when the
  business is done.
- The business (``rules.business.activity_type``) completes a referral and a refund of it
  may void held rewards (``complete.py``). A campaign hears only its business's type (and
  refunds when that is ``payment``), and a batch looks up its customers' referrals at once.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth
from incentive.campaigns.kinds import (
    ActivityFacts,
    CampaignFacts,
    CampaignKind,
    KindRules,
    Outcome,
    register_kind,
)
from incentive.coupons import batches as coupon_batches
from incentive.referrals import accept, complete
from incentive.referrals.errors import InviteNotFound, ReferralsClosed
from incentive.referrals.models import ReferralInvite
from incentive.referrals.rules import ReferralRules, referral_rules

__all__ = ["ReferralKind", "ReferralRules"]


class ReferralKind(CampaignKind):
    name = "referral"
    rules = ReferralRules
    consumes = frozenset({"signup", "payment", "refund", "task_completed", "custom"})

    def budget_asset(self, rules: KindRules) -> str:
        assert isinstance(rules, ReferralRules)
        return rules.budget_asset

    def listens_to(self, campaign: CampaignFacts, activity_type: str) -> bool:
        business = referral_rules(campaign).business.activity_type
        return activity_type in ("signup", business) or (
            activity_type == "refund" and business == "payment"
        )

    async def on_create(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        await _check_batches(session, campaign)

    async def on_edit(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        await _check_batches(session, campaign)

    async def on_activities(
        self, session: AsyncSession, campaign: CampaignFacts, activities: list[ActivityFacts]
    ) -> list[Outcome]:
        business = [a.customer for a in activities if _is_business(a)]
        found = await complete.referred(session, campaign.id, business)
        await complete.lock_open(session, list(found.values()))
        answers = []
        for activity in activities:
            if _is_business(activity):
                referral = found.get(activity.customer)
                answers.append(await complete.complete(session, campaign, activity, referral))
            else:
                answers.append(await self.on_activity(session, campaign, activity))
        return answers

    async def on_activity(
        self, session: AsyncSession, campaign: CampaignFacts, activity: ActivityFacts
    ) -> Outcome:
        if activity.type == "refund":
            return await complete.refund(session, campaign, activity)
        if activity.type != "signup":
            found = await complete.referred(session, campaign.id, [activity.customer])
            return await complete.complete(
                session, campaign, activity, found.get(activity.customer)
            )
        token = activity.attributes.get("invite")
        if not isinstance(token, str) or not token:
            return Outcome.refused("no-invite")
        invite = await session.scalar(
            select(ReferralInvite.campaign_id).where(ReferralInvite.token == token)
        )
        if invite is None:
            return Outcome.refused("invite-not-found")
        if invite != campaign.id:
            return Outcome.refused("other-campaign")
        card = (await auth.user_cards(session, [activity.customer])).get(activity.customer)
        if card is None or card.role != "customer":
            return Outcome.refused("unknown-customer")
        try:
            async with session.begin_nested():
                referral = await accept.accept(session, token, card.id, card.created_at, "activity")
        except InviteNotFound as exc:
            return Outcome.refused(f"invite-{exc.extra.get('reason', 'unknown')}")
        except ReferralsClosed:
            return Outcome.refused("referrals-closed")
        return Outcome.refused(
            f"referral-{referral.state}",
            referral_id=referral.id,
            referral_reason=referral.reason,
        )


def _is_business(activity: ActivityFacts) -> bool:
    return activity.type not in ("signup", "refund")


async def _check_batches(session: AsyncSession, campaign: CampaignFacts) -> None:
    rules = referral_rules(campaign)
    for side in ("referrer", "referee"):
        spec = getattr(rules, f"{side}_reward")
        if spec is None or spec.coupon_batch_id is None:
            continue
        await coupon_batches.check_same_owner(
            session, campaign, spec.coupon_batch_id, f"rules.{side}_reward.coupon_batch_id"
        )


register_kind(ReferralKind())
