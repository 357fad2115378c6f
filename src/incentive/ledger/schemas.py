"""Ledger request and response shapes. Amounts are integers in the asset's minor unit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from incentive.kit.pagination import Page
from incentive.kit.text import Line, document_within
from incentive.ledger.service import MAX_AMOUNT, OWNER_TYPES

MAX_METADATA_BYTES = 4096

AccountId = Annotated[int, Field(ge=1, le=2**63 - 1, description="account id")]
Amount = Annotated[
    int, Field(strict=True, ge=1, le=MAX_AMOUNT, description="minor units (fen, points)")
]
Kind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,31}$", examples=["rebate"])]
Reference = Annotated[Line, Field(max_length=200)]
Metadata = Annotated[
    dict[str, Any],
    Field(max_length=50, description=f"JSON object of at most {MAX_METADATA_BYTES} bytes"),
    AfterValidator(document_within(MAX_METADATA_BYTES)),
]
OwnerType = Literal["user", "merchant", "campaign", "partner", "platform"]
assert set(OWNER_TYPES) == set(OwnerType.__args__)  # type: ignore[attr-defined]

MAX_BATCH_ITEMS = 10_000


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_type: str
    owner_id: str
    asset: str
    name: str
    balance: int
    allow_negative: bool
    created_at: datetime


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner_type: OwnerType
    owner_id: Line = Field(min_length=1, max_length=64)
    asset: str = Field(pattern=r"^[A-Z][A-Z0-9_]{1,15}$", examples=["POINTS", "CNY"])
    name: str = Field("main", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    allow_negative: bool = False


class TransferOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    idempotency_key: str
    debit_account_id: int
    credit_account_id: int
    amount: int
    asset: str
    kind: str
    reference: str
    metadata: dict[str, Any] = Field(validation_alias="meta")
    created_at: datetime


class TransferIn(BaseModel):
    """One transfer; its idempotency key is the request's ``Idempotency-Key`` header."""

    model_config = ConfigDict(extra="forbid")

    debit_account_id: AccountId
    credit_account_id: AccountId
    amount: Amount
    kind: Kind
    reference: Reference = ""
    metadata: Metadata = Field(default_factory=dict)


class BatchItemIn(TransferIn):
    idempotency_key: str = Field(min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItemIn] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class BatchOut(BaseModel):
    created: int
    skipped: int
    skipped_keys: list[str]


class TransferPage(Page[TransferOut]):
    """Transfers, newest first."""


class AccountPage(Page[AccountOut]):
    """Accounts, by id."""
