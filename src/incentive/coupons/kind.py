"""The ``coupon`` campaign kind: a batch opened on activation and closed when the campaign
leaves ``active``; payments and completed tasks unlock the coupons their task locked."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns.kinds import (
    ActivityFacts,
    CampaignFacts,
    CampaignKind,
    KindRules,
    Outcome,
    register_kind,
)
from incentive.coupons import batches, providers, tasks
from incentive.coupons.rules import CouponRules


class CouponKind(CampaignKind):
    name = "coupon"
    rules = CouponRules
    consumes = frozenset({"payment", "task_completed"})

    def budget_asset(self, rules: KindRules) -> str:
        return "CNY"

    def listens_to(self, campaign: CampaignFacts, activity_type: str) -> bool:
        rules = campaign.rules
        assert isinstance(rules, CouponRules)
        return rules.task is not None and rules.task.activity == activity_type

    async def on_create(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        await providers.check_rules(session, campaign)

    async def on_edit(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        await providers.check_rules(session, campaign)

    async def on_activate(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        await batches.open_for(session, campaign)

    async def on_transition(
        self, session: AsyncSession, campaign: CampaignFacts, from_status: str
    ) -> None:
        if from_status == "active" and campaign.status != "active":
            await batches.close_for(session, campaign.id)

    async def on_activities(
        self, session: AsyncSession, campaign: CampaignFacts, activities: list[ActivityFacts]
    ) -> list[Outcome]:
        return await tasks.complete_tasks(session, campaign, activities)


register_kind(CouponKind())
