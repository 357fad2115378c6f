"""Campaign request/response shapes and the typed rules of every campaign kind.

``CampaignRules`` is a discriminated union on ``kind``: a new kind adds one rules model (with
``kind: Literal[...]`` and a ``budget_asset``) and one entry in the union. Money is ``int`` in
fen, points are ``int``, rates are ``int`` basis points (10000 = 100 %).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

Status = Literal[
    "draft", "pending_review", "approved", "rejected", "active", "paused", "ended", "cancelled"
]
BudgetAsset = Literal["POINTS", "CNY"]

MAX_FEN = 10**12  # ten billion yuan: far above any real campaign, far below BIGINT
MAX_POINTS = 10**12
MAX_COUNT = 10**9

Fen = Annotated[int, Field(strict=True, ge=0, le=MAX_FEN, description="amount in fen")]
PositiveFen = Annotated[int, Field(strict=True, ge=1, le=MAX_FEN, description="amount in fen")]
Points = Annotated[int, Field(strict=True, ge=0, le=MAX_POINTS, description="points")]
BasisPoints = Annotated[
    int, Field(strict=True, ge=0, le=10_000, description="rate in basis points (10000 = 100%)")
]
Count = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _Rules(BaseModel):
    """Base of every kind's rules; each kind also says which asset funds its budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RebateRules(_Rules):
    """Two-way rebate on a payment: the user and the merchant are both paid from the budget."""

    kind: Literal["rebate"] = "rebate"
    user_rebate_bp: BasisPoints
    merchant_rebate_bp: BasisPoints
    staff_rebate_bp: BasisPoints = 0
    min_payment_fen: Fen = 0
    max_rebate_fen: PositiveFen = Field(description="cap of one payment's total rebate, fen")

    @model_validator(mode="after")
    def _something_rebated(self) -> RebateRules:
        if self.user_rebate_bp + self.merchant_rebate_bp + self.staff_rebate_bp == 0:
            raise ValueError("at least one of the rebate rates must be above 0")
        return self

    @property
    def budget_asset(self) -> BudgetAsset:
        return "CNY"


class ReferralRules(_Rules):
    kind: Literal["referral"] = "referral"
    referrer_reward_points: Points
    referee_reward_points: Points = 0
    max_referrals_per_user: Count
    business_action: str = Field("first_payment", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _something_rewarded(self) -> ReferralRules:
        if self.referrer_reward_points + self.referee_reward_points == 0:
            raise ValueError("referrer or referee reward points must be above 0")
        return self

    @property
    def budget_asset(self) -> BudgetAsset:
        return "POINTS"


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


class RewardRules(_Rules):
    """Rewards tried in list order: when one is out of stock the next one is given."""

    kind: Literal["reward"] = "reward"
    rewards: list[RewardOption] = Field(min_length=1, max_length=20)
    per_user_limit: Count = 1
    budget_asset: BudgetAsset = "POINTS"

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


class FlashSaleRules(_Rules):
    kind: Literal["flash_sale"] = "flash_sale"
    sku: Code
    item_name: str = Field(min_length=1, max_length=200)
    price_fen: PositiveFen
    total_stock: Count
    per_user_limit: Count = 1
    buckets: Annotated[int, Field(strict=True, ge=1, le=1024)] | None = Field(
        None, description="stock sub-buckets; unset = from live configuration"
    )

    @model_validator(mode="after")
    def _buckets_fit(self) -> FlashSaleRules:
        if self.buckets is not None and self.buckets > self.total_stock:
            raise ValueError("buckets cannot exceed total_stock")
        if self.per_user_limit > self.total_stock:
            raise ValueError("per_user_limit cannot exceed total_stock")
        return self

    @property
    def budget_asset(self) -> BudgetAsset:
        return "CNY"


class CouponRules(_Rules):
    kind: Literal["coupon"] = "coupon"
    face_value_fen: PositiveFen
    min_spend_fen: Fen = 0
    quantity: Count
    per_user_limit: Count = 1
    valid_days: Annotated[int, Field(strict=True, ge=1, le=3650)] = 30

    @model_validator(mode="after")
    def _limit_fits(self) -> CouponRules:
        if self.per_user_limit > self.quantity:
            raise ValueError("per_user_limit cannot exceed quantity")
        return self

    @property
    def budget_asset(self) -> BudgetAsset:
        return "CNY"


CampaignRules = Annotated[
    RebateRules | ReferralRules | RewardRules | FlashSaleRules | CouponRules,
    Field(discriminator="kind"),
]
rules_adapter: TypeAdapter[CampaignRules] = TypeAdapter(CampaignRules)
KINDS: tuple[str, ...] = tuple(
    m.model_fields["kind"].default
    for m in (RebateRules, ReferralRules, RewardRules, FlashSaleRules, CouponRules)
)
Kind = Literal["rebate", "referral", "reward", "flash_sale", "coupon"]
assert set(KINDS) == set(Kind.__args__)  # type: ignore[attr-defined]

RulesPayload = Annotated[
    dict[str, Any],
    Field(
        max_length=100,
        description="kind-specific rules: the fields of RebateRules, ReferralRules, "
        "RewardRules, FlashSaleRules or CouponRules (by `kind`). Integers only for money.",
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=5000)]
Reason = Annotated[str, Field(max_length=1000)]


class CampaignIn(BaseModel):
    """A new campaign, saved as a draft. Merchant staff create for their own merchant;
    operators create platform campaigns, or a merchant's with ``merchant_id``."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    name: Name
    description: Description = ""
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    merchant_id: str | None = Field(None, min_length=1, max_length=32)
    rules: RulesPayload


class CampaignPatch(BaseModel):
    """Edit a draft or rejected campaign; ``rules`` replaces the rules as a whole.

    ``version`` (optional) makes the edit conditional on the version last read.
    """

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    rules: RulesPayload | None = None
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class TransitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Status
    reason: Reason = ""
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        None, description="only change the campaign if it is still at this version"
    )


class CampaignOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    owner_type: str
    merchant_id: str | None
    name: str
    description: str
    starts_at: datetime
    ends_at: datetime
    status: Status
    rules: CampaignRules
    budget_account_id: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int


class CampaignPage(BaseModel):
    items: list[CampaignOut]
    next_cursor: str | None


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    campaign_id: str
    from_status: str | None
    to_status: str
    actor: str
    actor_role: str
    reason: str
    at: datetime


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Annotated[int, Field(strict=True, ge=1, le=10**15, description="minor units")]
    from_account_id: Annotated[int, Field(ge=1, le=2**63 - 1)]


class BudgetOut(BaseModel):
    campaign_id: str
    account_id: int
    asset: str
    balance: int
    transfer_id: int | None = None
