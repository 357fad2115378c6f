"""The rules of a ``coupon`` campaign (what the reviewer approves)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from incentive.campaigns.kinds import KindRules
from incentive.kit.amounts import BasisPoints, Code, Count, Fen, PositiveFen

ProviderCode = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,39}$")]
DEFAULT_VALID_DAYS = 30


class CouponTask(BaseModel):
    """What a customer must do before a claimed coupon unlocks: an activity of ``activity``
    type by that customer within ``within_days`` of the claim (a payment of at least
    ``min_amount_fen``; a completed task whose ``attributes.task_code`` is ``task_code``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activity: Literal["payment", "task_completed"]
    min_amount_fen: Fen = 0
    task_code: Code | None = None
    within_days: Annotated[int, Field(strict=True, ge=1, le=365)] = 7

    @model_validator(mode="after")
    def _code_for_tasks(self) -> CouponTask:
        if (self.activity == "task_completed") != (self.task_code is not None):
            raise ValueError("task_code is required for task_completed, and only for it")
        return self


class CouponRules(KindRules):
    """Our own coupons (a face value, or a rate with a cap) or a provider's batch
    (``provider`` + ``provider_batch``: its terms and stock come from the provider)."""

    kind: Literal["coupon"] = "coupon"
    provider: ProviderCode | None = None
    provider_batch: Code | None = None
    face_value_fen: PositiveFen | None = None
    rate_bp: BasisPoints | None = None
    max_discount_fen: PositiveFen | None = Field(
        None, description="cap of a rate coupon's discount, fen"
    )
    min_spend_fen: Fen = 0
    quantity: Count | None = Field(None, description="coupons in all (our own batches)")
    per_user_limit: Count = 1
    valid_days: Annotated[int, Field(strict=True, ge=1, le=3650)] | None = Field(
        None, description=f"valid N days from the claim (default {DEFAULT_VALID_DAYS})"
    )
    valid_until: AwareDatetime | None = Field(
        None, description="valid until this time for every coupon (instead of valid_days)"
    )
    codes: Literal["generated", "imported"] = "generated"
    task: CouponTask | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CouponRules:
        if self.valid_days is not None and self.valid_until is not None:
            raise ValueError("set valid_days or valid_until, not both")
        if self.provider is not None or self.provider_batch is not None:
            if self.provider is None or self.provider_batch is None:
                raise ValueError("provider and provider_batch go together")
            own = (self.face_value_fen, self.rate_bp, self.max_discount_fen, self.quantity)
            if any(v is not None for v in own) or self.codes != "generated":
                raise ValueError(
                    "a provider's batch takes its value, quantity and codes from the provider"
                )
            return self
        if (self.face_value_fen is None) == (self.rate_bp is None):
            raise ValueError("set face_value_fen or rate_bp (one of them)")
        if self.rate_bp is not None and (self.rate_bp == 0 or self.max_discount_fen is None):
            raise ValueError("a rate coupon needs rate_bp above 0 and max_discount_fen")
        if self.quantity is None:
            raise ValueError("quantity is required for our own coupons")
        if self.per_user_limit > self.quantity:
            raise ValueError("per_user_limit cannot exceed quantity")
        return self

    @property
    def own(self) -> bool:
        return self.provider is None
