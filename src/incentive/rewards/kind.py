"""The ``reward`` campaign kind: its rules (triggering and stock come with their issue)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from incentive.campaigns.kinds import CampaignKind, KindRules, register_kind
from incentive.kit.amounts import MAX_COUNT, MAX_FEN, Code, Count


class RewardOption(BaseModel):
    """One reward; its place in ``RewardRules.rewards`` is its fallback order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Code
    type: Literal["points", "cash", "coupon", "benefit"]
    delivery: Literal["ledger", "coupon_wallet", "third_party", "message"]
    amount: Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)] = Field(
        0, description="points for type points, fen for type cash and coupon face value"
    )
    stock: Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
    audience: Literal["any", "first_time", "returning"] = "any"

    @model_validator(mode="after")
    def _consistent(self) -> RewardOption:
        if self.type in ("points", "cash"):
            if self.delivery != "ledger":
                raise ValueError(f"{self.type} rewards are delivered by the ledger")
            if self.amount < 1:
                raise ValueError(f"{self.type} rewards need an amount above 0")
        return self


class RewardRules(KindRules):
    """Rewards tried in list order: when one is out of stock the next one is given."""

    kind: Literal["reward"] = "reward"
    rewards: list[RewardOption] = Field(min_length=1, max_length=20)
    per_user_limit: Count = 1
    budget_asset: Literal["POINTS", "CNY"] = "POINTS"

    @field_validator("rewards")
    @classmethod
    def _unique_codes(cls, rewards: list[RewardOption]) -> list[RewardOption]:
        codes = [r.code for r in rewards]
        if len(set(codes)) != len(codes):
            raise ValueError("reward codes must be unique")
        return rewards

    @model_validator(mode="after")
    def _asset_matches(self) -> RewardRules:
        wanted = {"points": "POINTS", "cash": "CNY"}
        for reward in self.rewards:
            asset = wanted.get(reward.type)
            if asset is not None and asset != self.budget_asset:
                raise ValueError(
                    f"reward {reward.code!r} pays {asset} but budget_asset is {self.budget_asset}"
                )
        return self


class RewardKind(CampaignKind):
    name = "reward"
    rules = RewardRules

    def budget_asset(self, rules: KindRules) -> str:
        assert isinstance(rules, RewardRules)
        return rules.budget_asset


register_kind(RewardKind())
