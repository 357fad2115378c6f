"""Coupon request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    UrlConstraints,
)
from pydantic_core import PydanticCustomError

from incentive.coupons.batches import IMPORT_MAX
from incentive.coupons.models import CODE_MAX_LENGTH, STATES
from incentive.coupons.rules import ProviderCode
from incentive.kit.amounts import Fen
from incentive.kit.codes import normalize_code
from incentive.kit.pagination import Page
from incentive.kit.text import Line, Name
from incentive.kit.webhooks import webhook_key

CouponState = Literal[
    "received",
    "activating",
    "unknown",
    "usable",
    "held",
    "redeemed",
    "expired",
    "failed",
    "revoked",
]
assert set(CouponState.__args__) == set(STATES)  # type: ignore[attr-defined]
# What a cashier types or a scanner reads: spaces and hyphens are ignored, case too.
CodeText = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 -]+$")
]


def _usable_secret(secret: str) -> str:
    # A "whsec_" secret is keyed by its base64-decoded bytes (Standard Webhooks): one that does
    # not decode would refuse every webhook the provider ever signs, so it is refused here.
    try:
        webhook_key(secret)
    except ValueError:
        raise PydanticCustomError(
            "webhook_secret_base64", "a secret starting whsec_ must be base64 after it"
        ) from None
    return secret


def _storable_code(code: str) -> str:
    # Stored as typed at the till would read it (no spaces, hyphens; upper case): an imported
    # code with nothing left, or longer than a coupon's code column, could never be redeemed.
    if not 0 < len(normalize_code(code)) <= CODE_MAX_LENGTH:
        raise PydanticCustomError(
            "code_length",
            "must have 1 to {max} letters and digits besides spaces and hyphens",
            {"max": CODE_MAX_LENGTH},
        )
    return code


ImportedCodeText = Annotated[CodeText, AfterValidator(_storable_code)]
Secret = Annotated[
    str,
    StringConstraints(min_length=16, max_length=200, pattern=r"^[\x21-\x7e]+$"),
    AfterValidator(_usable_secret),
]
#: what the providers table holds (``base_url``: 500 characters)
BaseUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=500)]
Credentials = Annotated[
    str, StringConstraints(min_length=1, max_length=500, pattern=r"^[\x21-\x7e]+$")
]
Reason = Annotated[Line, Field(min_length=1, max_length=200)]


# --------------------------------------------------------------------------- providers


class ProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ProviderCode
    name: Name
    base_url: BaseUrl
    credentials: Credentials = Field(description="sent as `Authorization: Bearer …`")
    webhook_secret: Secret | None = Field(
        None, description="signs the provider's webhooks; generated (and shown once) if absent"
    )


class ProviderChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    base_url: BaseUrl | None = None
    credentials: Credentials | None = None
    webhook_secret: Secret | None = None
    state: Literal["active", "disabled"] | None = None


class ProviderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    name: str
    base_url: str
    state: str
    created_at: datetime
    updated_at: datetime
    synced_at: datetime | None
    sync_error: str | None
    webhook_url: str = Field(description="where the provider sends its signed webhooks")


class ProviderRegistered(ProviderOut):
    webhook_secret: str = Field(description="shown this once")


class ProviderPage(Page[ProviderOut]):
    pass


class SyncedOut(BaseModel):
    provider: str
    batches: int


class WebhookOut(BaseModel):
    type: str
    applied: bool = True


# --------------------------------------------------------------------------- batches


class BatchOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    campaign_id: str | None
    name: str
    provider: str | None = Field(None, description="the provider's code (third-party batches)")
    external_id: str | None = Field(None, description="the provider's id of the batch")
    open: bool = Field(description="claims are taken now")
    provider_state: str | None
    stock: int = Field(description="coupons that may still be claimed")
    claimed: int
    per_customer_limit: int
    face_value_fen: int | None
    rate_bp: int | None
    max_discount_fen: int | None
    min_spend_fen: int
    valid_until: datetime | None
    valid_days: int | None
    task: dict[str, object] | None
    counts: dict[str, int] | None = Field(
        None, description="coupons by state (operators and the owning merchant)"
    )


class BatchPage(Page[BatchOut]):
    pass


class CodesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    codes: Annotated[list[ImportedCodeText], Field(min_length=1, max_length=IMPORT_MAX)]


class CodesOut(BaseModel):
    batch_id: str
    added: int
    duplicates: int


# --------------------------------------------------------------------------- coupons


class CouponOut(BaseModel):
    """A coupon as its holder sees it. ``code`` (shown once usable) is what the till takes;
    ``qr`` is a QR code of it."""

    id: str
    batch_id: str
    campaign_id: str
    state: CouponState
    code: str | None
    provider_code: str | None
    face_value_fen: int | None
    rate_bp: int | None
    max_discount_fen: int | None
    min_spend_fen: int
    claimed_at: datetime
    task_due_at: datetime | None = Field(description="a locked coupon's task must be done by")
    valid_from: datetime
    valid_until: datetime
    reason: str | None = Field(description="why a coupon failed or was revoked")
    qr: str | None = Field(description="path of the QR code image (PNG; `?format=svg`)")


class CouponPage(Page[CouponOut]):
    pass


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_state: str | None
    to_state: str
    actor: str
    actor_role: str
    reason: str
    at: datetime


class TransitionPage(Page[TransitionOut]):
    pass


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


# --------------------------------------------------------------------------- till


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: CodeText
    amount_fen: Fen | None = Field(None, description="the sale, to check the minimum spend")


class SaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: CodeText
    amount_fen: Fen = Field(description="the sale the coupon is used on")


class VerdictOut(BaseModel):
    code: str
    coupon_id: str
    state: str
    usable: bool = True
    discount_fen: int | None = Field(description="what the coupon takes off `amount_fen`")
    min_spend_fen: int
    valid_until: datetime
    held_until: datetime | None = None


class RedemptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    coupon_id: str
    campaign_id: str
    merchant_id: str
    staff_id: str
    amount_fen: int
    discount_fen: int
    redeemed_at: datetime
    undone_at: datetime | None
    provider_state: str | None = Field(
        description="third-party coupons: pending, confirmed, reversed or failed:<why>"
    )


class RedemptionPage(Page[RedemptionOut]):
    pass
