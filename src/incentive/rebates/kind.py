"""The ``rebate`` campaign kind: a payment at a joined merchant rebates the customer, the
merchant and (if set) the staff member from the budget; a refund reverses it."""

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
from incentive.rebates import refunds, service
from incentive.rebates.rules import RebateRules


class RebateKind(CampaignKind):
    name = "rebate"
    rules = RebateRules
    consumes = frozenset({"payment", "refund"})

    def budget_asset(self, rules: KindRules) -> str:
        return "CNY"

    async def on_activity(
        self, session: AsyncSession, campaign: CampaignFacts, activity: ActivityFacts
    ) -> Outcome:
        return (await self.on_activities(session, campaign, [activity]))[0]

    async def on_activities(
        self, session: AsyncSession, campaign: CampaignFacts, activities: list[ActivityFacts]
    ) -> list[Outcome]:
        payments = [a for a in activities if a.type == "payment"]
        answers = dict(
            zip(
                (p.id for p in payments),
                await service.pay_many(session, campaign, payments),
                strict=True,
            )
        )
        for refund in activities:
            if refund.type == "refund":
                answers[refund.id] = await refunds.reverse(session, campaign, refund)
        return [answers[a.id] for a in activities]


register_kind(RebateKind())
