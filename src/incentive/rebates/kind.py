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
from incentive.rebates import service
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
        if activity.type == "payment":
            return await service.pay(session, campaign, activity)
        return await service.reverse(session, campaign, activity)


register_kind(RebateKind())
