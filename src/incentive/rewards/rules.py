"""The rules of a ``reward`` campaign (what the reviewer approves).

A campaign gives each customer who triggers it one reward: the first of its chain that suits
the customer's **user type** (first-time participant or returning) and can serve now (stock,
per-customer limit of that reward, budget, delivery). The chain's order is the fallback order.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from incentive.campaigns.kinds import CampaignFacts, KindRules
from incentive.kit.amounts import MAX_COUNT, MAX_FEN, Code, Count, Fen
from incentive.kit.text import Name, Prose

#: activity types a reward campaign may be triggered by (besides the customer's own claim)
TRIGGERS = ("signup", "payment", "task_completed", "custom")
#: how each reward type may be delivered
DELIVERIES = {
    "points": ("ledger",),
    "cash": ("ledger",),
    "coupon": ("coupon_wallet", "third_party"),
    "benefit": ("message",),
}
Stock = Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]


class RewardOption(BaseModel):
    """One reward; its place in ``RewardRules.rewards`` is its fallback order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Code
    title: Name | None = Field(None, description="shown to the customer")
    type: Literal["points", "cash", "coupon", "benefit"]
    delivery: Literal["ledger", "coupon_wallet", "third_party", "message"]
    amount: Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)] = Field(
        0, description="points for type points, fen for type cash (paid from the budget)"
    )
    stock: Stock = Field(description="units this reward can give; operators restock it live")
    audience: Literal["any", "first_time", "returning"] = "any"
    per_user_limit: Count | None = Field(
        None, description="this reward at most N times per customer (then the next is given)"
    )
    batch_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="the coupon batch a coupon reward comes from (ours for coupon_wallet, a "
        "provider's for third_party)",
    )
    message: Annotated[Prose, Field(min_length=1, max_length=2000)] | None = Field(
        None, description="the text a message reward sends to the customer"
    )
    low_stock_threshold: Stock | None = Field(
        None, description="alert (event, metric, log line) when fewer units than this are left"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RewardOption:
        allowed = DELIVERIES[self.type]
        if self.delivery not in allowed:
            raise ValueError(f"{self.type} rewards are delivered by {' or '.join(allowed)}")
        if self.type in ("points", "cash") and self.amount < 1:
            raise ValueError(f"{self.type} rewards need an amount above 0")
        if (self.type == "coupon") != (self.batch_id is not None):
            raise ValueError("batch_id is required for coupon rewards, and only for them")
        if (self.delivery == "message") != (self.message is not None):
            raise ValueError("message is required for message delivery, and only for it")
        return self


class RewardRules(KindRules):
    """Rewards tried in list order for the customer's user type: when one cannot serve, the
    next one is given."""

    kind: Literal["reward"] = "reward"
    rewards: list[RewardOption] = Field(min_length=1, max_length=20)
    per_user_limit: Count = Field(1, description="rewards per customer from this campaign")
    budget_asset: Literal["POINTS", "CNY"] = "POINTS"
    triggers: list[Literal["signup", "payment", "task_completed", "custom"]] = Field(
        default_factory=list,
        max_length=4,
        description="activity types that give the reward (besides the customer's own claim)",
    )
    min_payment_fen: Fen = Field(0, description="a payment triggers only from this amount")
    participant_group: Code | None = Field(
        None,
        description="first-time means never rewarded by any campaign of this group (default: "
        "by this campaign)",
    )
    buckets: Annotated[int, Field(strict=True, ge=1, le=1024)] | None = Field(
        None, description="stock sub-buckets per reward; unset = live rewards.buckets"
    )

    @field_validator("rewards")
    @classmethod
    def _unique_codes(cls, rewards: list[RewardOption]) -> list[RewardOption]:
        codes = [r.code for r in rewards]
        if len(set(codes)) != len(codes):
            raise ValueError("reward codes must be unique")
        return rewards

    @field_validator("triggers")
    @classmethod
    def _unique_triggers(cls, triggers: list[str]) -> list[str]:
        if len(set(triggers)) != len(triggers):
            raise ValueError("triggers must be unique")
        return triggers

    @model_validator(mode="after")
    def _asset_matches(self) -> RewardRules:
        for reward in self.rewards:
            check_asset(reward, self.budget_asset)
        return self


def reward_rules(campaign: CampaignFacts) -> RewardRules:
    """The typed rules of a reward campaign."""
    rules = campaign.rules
    assert isinstance(rules, RewardRules), f"campaign {campaign.id} is not a reward campaign"
    return rules


def check_asset(reward: RewardOption, budget_asset: str) -> None:
    """A points reward needs a POINTS budget, a cash reward a CNY one."""
    asset = {"points": "POINTS", "cash": "CNY"}.get(reward.type)
    if asset is not None and asset != budget_asset:
        raise ValueError(f"reward {reward.code!r} pays {asset} but budget_asset is {budget_asset}")
