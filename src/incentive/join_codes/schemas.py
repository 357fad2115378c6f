"""Join-code request/response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from incentive.join_codes.service import MAX_COUNT, PREFIX_MAX_LENGTH
from incentive.kit.codes import ALPHABET
from incentive.kit.pagination import Page

CodeStatus = Literal["unused", "used", "void"]
Prefix = Annotated[
    str,
    Field(
        min_length=1,
        max_length=PREFIX_MAX_LENGTH,
        pattern=f"^[{ALPHABET}]+$",
        description="written before each code: upper case letters and digits, no 0/O/1/I/L",
    ),
]
# What a merchant types: spaces and hyphens are ignored, case too.
CodeText = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 -]+$", examples=["ACME7K2M9QXH4"])
]


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: Annotated[int, Field(ge=1, le=MAX_COUNT, description="codes to generate")]
    prefix: Prefix | None = None


class GeneratedOut(BaseModel):
    campaign_id: str
    count: int
    prefix: str
    export: str = Field(description="where to download the campaign's codes as CSV")


class VoidIn(BaseModel):
    """``codes`` to void, or ``all_unused: true`` for every unused code of the campaign."""

    model_config = ConfigDict(extra="forbid")

    codes: Annotated[list[CodeText], Field(min_length=1, max_length=1000)] | None = None
    all_unused: StrictBool = False


class VoidedOut(BaseModel):
    campaign_id: str
    voided: int = Field(description="codes moved from unused to void (used ones never are)")


class JoinCodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    campaign_id: str
    status: CodeStatus
    created_at: datetime
    redeemed_by_merchant_id: str | None
    redeemed_by_user_id: str | None
    redeemed_at: datetime | None
    voided_at: datetime | None


class JoinCodePage(Page[JoinCodeOut]):
    pass


class RedemptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: CodeText


class MembershipOut(BaseModel):
    """A merchant's membership of a campaign (``joined`` false: not a member)."""

    campaign_id: str
    merchant_id: str
    joined: bool
    code: str | None = None
    joined_at: datetime | None = None
    joined_by: str | None = None


class MembershipPage(Page[MembershipOut]):
    pass
