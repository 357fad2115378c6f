"""Live configuration of referrals: the abuse check on referees from one address."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

MAX_REFEREES_PER_ADDRESS_HOUR = register_key(
    "referrals.max_referees_per_address_hour",
    Annotated[int, Field(ge=1, le=1_000_000)],
    10,
    "Referees one client address may bring into one referral campaign per UTC hour; the next "
    "acceptance from that address is stored rejected (address-burst).",
)

RELEASE_CHECK_SECONDS = register_key(
    "referrals.release_check_seconds",
    Annotated[float, Field(ge=0.2, le=86_400)],
    30.0,
    "How often workers pay held (pending) referral rewards whose hold ended, and label "
    "accepted referrals whose business window passed expired.",
)
