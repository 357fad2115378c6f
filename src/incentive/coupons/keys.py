"""Live configuration of coupons: the till's windows and how providers are called."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

HOLD_SECONDS = register_key(
    "coupons.hold_seconds",
    Annotated[int, Field(ge=5, le=3600)],
    120,
    "How long a coupon prepared at a till stays held for that merchant's commit.",
)
UNDO_WINDOW_SECONDS = register_key(
    "coupons.undo_window_seconds",
    Annotated[int, Field(ge=0, le=604_800)],
    900,
    "How long after a redemption the merchant may undo it (the coupon is usable again).",
)
EXPIRY_SECONDS = register_key(
    "coupons.expiry_seconds",
    Annotated[float, Field(ge=0.1, le=86_400)],
    30.0,
    "How often workers expire coupons past their validity or their task window.",
)
SYNC_SECONDS = register_key(
    "coupons.provider_sync_seconds",
    Annotated[float, Field(ge=1, le=86_400)],
    60.0,
    "How often workers pull every provider's batches (webhooks push changes in between).",
)
CALL_TIMEOUT_SECONDS = register_key(
    "coupons.provider_timeout_seconds",
    Annotated[float, Field(ge=0.1, le=120)],
    5.0,
    "How long a call to a provider may take; past it the answer is unclear and the provider "
    "is asked before the call is sent again.",
)
CALL_ATTEMPTS = register_key(
    "coupons.provider_call_attempts",
    Annotated[int, Field(ge=1, le=100)],
    8,
    "Attempts of a call to a provider before it fails for good.",
)
CALL_RETRY_BASE_SECONDS = register_key(
    "coupons.provider_retry_base_seconds",
    Annotated[float, Field(ge=0.01, le=3600)],
    1.0,
    "First retry delay of a provider call that failed; doubles per attempt.",
)
CALL_RETRY_MAX_SECONDS = register_key(
    "coupons.provider_retry_max_seconds",
    Annotated[float, Field(ge=0.1, le=86_400)],
    300.0,
    "Longest retry delay of a provider call.",
)
CALL_LEASE_SECONDS = register_key(
    "coupons.provider_call_lease_seconds",
    Annotated[float, Field(ge=1, le=3600)],
    30.0,
    "How long a worker holds a provider call it took; a worker that died is taken over after.",
)
CALLS_IN_FLIGHT = register_key(
    "coupons.provider_calls_in_flight",
    Annotated[int, Field(ge=1, le=1000)],
    32,
    "Provider calls one worker makes at once.",
)
