"""Every process that signs customers up accepts the invite a sign-up carries (an auth
sign-up listener, see ``auth/signup.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import signup
from incentive.errors import InvalidField
from incentive.referrals import accept
from incentive.referrals.errors import InviteNotFound


async def on_signup(session: AsyncSession, facts: signup.Signup) -> Mapping[str, Any] | None:
    """Keep the sign-up's hashes; accept its invite. An unknown or expired invite, or one of
    a closed campaign, refuses the sign-up (nothing is created): the caller may retry without
    it."""
    await accept.record_signals(session, facts.user_id, facts.signals)
    if facts.invite is None:
        return None
    try:
        referral = await accept.accept(
            session,
            facts.invite,
            facts.user_id,
            facts.created_at,
            "signup",
            accept.Evidence(facts.signals, facts.address_hash),
        )
    except InviteNotFound as exc:
        reason = str(exc.extra.get("reason", "unknown"))
        raise InvalidField("invite", reason, f"invite: {exc.detail}") from None
    return {
        "referral_id": referral.id,
        "campaign_id": referral.campaign_id,
        "state": referral.state,
        "reason": referral.reason,
    }


async def start(app: FastAPI) -> None:
    signup.register_listener("referrals", on_signup)
