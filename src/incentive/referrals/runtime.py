"""Every process that signs customers up accepts the invite a sign-up carries (an auth
sign-up listener, see ``auth/signup.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import signup
from incentive.referrals import accept
from incentive.referrals.errors import InviteNotFound, ReferralsClosed


async def on_signup(session: AsyncSession, facts: signup.Signup) -> Mapping[str, Any] | None:
    """Keep the sign-up's hashes; accept its invite. An invite that cannot be accepted at all
    — unknown, expired, or of a campaign that takes no referrals now — is not taken and the
    account is made all the same (``state`` ``not-taken`` and why): a stale link must not keep
    anyone from signing up. Any other failure rolls the whole sign-up back."""
    await accept.record_signals(session, facts.user_id, facts.signals)
    if facts.invite is None:
        return None
    try:
        async with session.begin_nested():
            referral = await accept.accept(
                session,
                facts.invite,
                facts.user_id,
                facts.created_at,
                "signup",
                accept.Evidence(facts.signals, facts.address_hash),
            )
    except InviteNotFound as exc:
        return {"state": "not-taken", "reason": f"invite-{exc.extra.get('reason', 'unknown')}"}
    except ReferralsClosed:
        return {"state": "not-taken", "reason": "referrals-closed"}
    return {
        "referral_id": referral.id,
        "campaign_id": referral.campaign_id,
        "state": referral.state,
        "reason": referral.reason,
    }


async def start(app: FastAPI) -> None:
    signup.register_listener("referrals", on_signup)
