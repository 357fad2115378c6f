"""Counters of ``referral_counts`` that never pass their cap, whatever the concurrency: each
grows with one ``INSERT … ON CONFLICT DO UPDATE SET n = n + 1 WHERE n < :cap RETURNING n``
(no row back: the cap is reached and nothing changed). Subjects: ``referrer:{id}`` (accepted
referrals, period ``all`` or a UTC day), ``address:{hash}`` (acceptances per UTC hour) and
``invites:{id}`` (invites made per UTC day). Nothing here commits."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, bindparam
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import insert as db_insert
from incentive.db import per_dialect
from incentive.referrals.models import ReferralCount

_COUNTS = cast(Table, ReferralCount.__table__)


@per_dialect
def _statement(dialect: str) -> Any:
    c = _COUNTS.c
    return (
        db_insert(dialect, _COUNTS)
        .values(
            campaign_id=bindparam("campaign"),
            subject=bindparam("subject"),
            period=bindparam("period"),
            n=1,
        )
        .on_conflict_do_update(
            index_elements=["campaign_id", "subject", "period"],
            set_={"n": c.n + 1},
            where=c.n < bindparam("cap"),
        )
        .returning(c.n)
    )


async def take(
    session: AsyncSession, campaign_id: str, subject: str, period: str, cap: int
) -> bool:
    """Count one more of ``subject`` in ``period``; False (nothing counted) at ``cap``."""
    if cap < 1:
        return False
    params = {"campaign": campaign_id, "subject": subject, "period": period, "cap": cap}
    return (await session.execute(_statement(session), params)).first() is not None
