"""Every process that signs customers up accepts the invite a sign-up carries (an auth
sign-up listener, see ``auth/signup.py``); workers release held rewards whose hold ended and
label referrals whose business window passed (``referrals.release_due``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import signup
from incentive.db import Database, utcnow
from incentive.domains import WorkerJob
from incentive.referrals import accept, complete
from incentive.referrals.errors import InviteNotFound, ReferralsClosed
from incentive.referrals.keys import RELEASE_CHECK_SECONDS

log = logging.getLogger(__name__)


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


async def release_due(db: Database) -> list[str]:
    """Pay every held referral whose hold ended, one transaction each (a failure stops only
    its referral), and label those whose business window passed; the released ids."""
    now = utcnow()
    released: list[str] = []
    after = None
    while True:
        async with db.reader() as session:
            due = await complete.due_for_release(session, now, after)
        for _, referral_id in due:
            try:
                async with db.unit_of_work() as session:
                    if await complete.release_one(session, referral_id, now):
                        released.append(referral_id)
            except Exception:
                log.exception("referral release failed", extra={"referral_id": referral_id})
        if len(due) < complete.RELEASE_PAGE:
            break
        after = due[-1]
    async with db.unit_of_work() as session:
        expired = await complete.expire_due(session, now)
    if released or expired:
        log.info(
            "referrals released and expired",
            extra={"released": len(released), "expired": expired},
        )
    return released


async def _release_due(app: FastAPI) -> None:
    await release_due(app.state.db)


JOBS = (WorkerJob("referrals.release_due", _release_due, every=RELEASE_CHECK_SECONDS),)
