"""Reconciliation with a provider: its coupons issued on a day against ours.

Every difference is reported; what is safe is repaired: a coupon the provider issued (and
still holds as issued) that we hold as activating, unknown or failed becomes usable with
the provider's code (the provider holds it, so must the customer), and one the provider
revoked is revoked here too (the till must refuse it). Nothing is ever issued, redeemed or
deleted by a reconciliation.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.coupons import providers, service
from incentive.coupons.models import Coupon, ProviderCall
from incentive.coupons.provider import ProviderCoupon
from incentive.db import Database

log = logging.getLogger(__name__)

#: ours, when the provider has the coupon: repaired to usable
NOT_YET = ("activating", "unknown", "failed")
HELD = ("usable", "held", "redeemed")


@dataclass(frozen=True)
class Difference:
    request_no: str
    kind: str  # unknown-at-ours | issued-at-provider | code-differs | revoked-at-provider
    #          | redeemed-at-provider | missing-at-provider
    ours: str | None
    theirs: str | None
    repaired: bool = False


@dataclass
class Report:
    provider: str
    day: date
    theirs: int = 0
    ours: int = 0
    matched: int = 0
    differences: list[Difference] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["day"] = self.day.isoformat()
        return out


async def reconcile(db: Database, code: str, day: date) -> Report:
    """Compare provider ``code``'s coupons issued on ``day`` (UTC) with ours, repair what is
    safe (see the module), report the rest. Raises ``ProviderUnavailable`` when the provider's
    list cannot be read (nothing is changed then)."""
    async with db.unit_of_work() as session:
        provider = await providers.by_code(session, code)
    client = providers.client_for(provider.base_url, provider.credentials)
    try:
        theirs = {c.request_no: c async for c in client.coupons(date=day)}
    finally:
        await client.aclose()
    start = datetime.combine(day, time(), tzinfo=UTC)
    report = Report(code, day, theirs=len(theirs))
    async with db.unit_of_work() as session:
        asked_that_day = select(ProviderCall.coupon_id).where(
            ProviderCall.provider_id == provider.id,
            ProviderCall.action == "issue",
            ProviderCall.created_at >= start,
            ProviderCall.created_at < start + timedelta(days=1),
        )
        ours = {
            c.request_no: c
            for c in await session.scalars(
                select(Coupon).where(
                    Coupon.provider_id == provider.id,
                    Coupon.request_no.in_(sorted(theirs)) | Coupon.id.in_(asked_that_day),
                )
            )
            if c.request_no is not None
        }
        report.ours = len(ours)
        for request_no, coupon in sorted(theirs.items()):
            difference = await _compare(session, provider.id, ours.get(request_no), coupon)
            if difference is None:
                report.matched += 1
            else:
                report.differences.append(difference)
        for request_no, mine in sorted(ours.items()):
            if request_no not in theirs and mine.state in HELD:
                report.differences.append(
                    Difference(request_no, "missing-at-provider", mine.state, None)
                )
        await events.publish(
            session,
            "coupons.reconciled",
            {**report.as_json(), "differences": len(report.differences)},
            key=code,
        )
    if report.differences:
        log.warning(
            "coupon reconciliation found differences",
            extra={"provider": code, "day": day.isoformat(), "count": len(report.differences)},
        )
    return report


async def _compare(
    session: AsyncSession, provider_id: str, mine: Coupon | None, theirs: ProviderCoupon
) -> Difference | None:
    no = theirs.request_no
    if mine is None:
        return Difference(no, "unknown-at-ours", None, theirs.state)
    if mine.state in NOT_YET:
        # Only a coupon the provider still honours is safe to hand over: one it revoked (or
        # that was used there) would be refused at every till.
        repaired = theirs.state == "issued" and await providers.issued(
            session, provider_id, theirs, reason="reconciliation"
        )
        return Difference(no, "issued-at-provider", mine.state, theirs.state, repaired)
    if theirs.state == "revoked" and mine.state in ("usable", "held"):
        repaired = await service.move(
            session,
            mine.id,
            mine.state,
            "revoked",
            service.Actor(f"provider:{provider_id}", "provider"),
            "revoked at the provider (reconciliation)",
            reason="revoked-at-provider",
        )
        return Difference(no, "revoked-at-provider", mine.state, theirs.state, repaired)
    if mine.provider_code is not None and mine.provider_code != theirs.code:
        return Difference(no, "code-differs", mine.state, theirs.state)
    if theirs.state == "redeemed" and mine.state != "redeemed":
        return Difference(no, "redeemed-at-provider", mine.state, theirs.state)
    return None


def yesterday() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)
