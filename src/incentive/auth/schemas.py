from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from incentive.kit.text import Line, Prose, ShownName


class MeOut(BaseModel):
    id: str
    username: str
    role: str
    merchant_id: str | None = None


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Lengths are generous on purpose: a too-long name is just a failed login, not a 422
    # that would tell a guesser which names cannot exist. A control character is a 422: no
    # name can hold one (and PostgreSQL cannot even look one up).
    username: Line = Field(min_length=1, max_length=200)
    password: Prose = Field(min_length=1, max_length=4096)


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: Line = Field(min_length=1, max_length=200)


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="access token lifetime in seconds")


class PartnerKeyOut(BaseModel):
    id: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    created_at: datetime
    expires_at: datetime | None = Field(description="set once a newer key replaced this one")


class PartnerOut(BaseModel):
    id: str
    code: str
    name: str
    disabled: bool
    keys: list[PartnerKeyOut] = Field(description="the keys that work now")


class KeyRotationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=86_400,
        ge=0,
        le=30 * 24 * 3600,
        description="how long the keys in use now keep working (0: they stop at once)",
    )


class IssuedKeyOut(BaseModel):
    key: PartnerKeyOut
    api_key: str = Field(description="the new key; shown this once, only its hash is kept")


class SignupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Line = Field(min_length=3, max_length=64, description="3-64 of A-Z a-z 0-9 _ . -")
    password: Prose = Field(min_length=1, max_length=1024)
    display_name: ShownName = Field(
        "",
        max_length=200,
        description="the name shown to other users (no bidirectional override or isolate "
        "controls); default: the username, masked",
    )
    phone: Line | None = Field(
        None,
        min_length=3,
        max_length=32,
        pattern=r"^\+?[0-9 ()-]{3,32}$",
        description="kept only as a peppered hash (abuse checks)",
    )
    device_id: Line | None = Field(
        None, min_length=1, max_length=200, description="kept only as a peppered hash"
    )
    invite: Line | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,32}$", description="a referral invite's token to accept"
    )


class InviteAnswerOut(BaseModel):
    """What became of the invite a sign-up carried: the referral, accepted or rejected (with
    its reason), or ``not-taken`` when the invite could not be accepted at all — unknown,
    expired, or of a campaign that takes no referrals now — and the account was made without
    it."""

    referral_id: str | None = None
    campaign_id: str | None = None
    state: Literal["accepted", "rejected", "not-taken"]
    reason: str | None = Field(
        None,
        description="rejected: the referral's reason; not-taken: invite-unknown, "
        "invite-expired or referrals-closed",
    )


class SignupOut(BaseModel):
    id: str
    username: str
    invite: InviteAnswerOut | None = None
