"""Share statistics of a campaign, in all and by channel, and per sharer (paged)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import one_of
from incentive.kit.pagination import KeyId, Keyset, Slice
from incentive.sharing.models import Share, ShareConversion, ShareSharer, ShareVisit


@dataclass
class Counts:
    shares: int = 0
    visits: int = 0
    unique_visitors: int = 0
    conversions: int = 0
    coupons: int = 0


@dataclass
class CampaignStats:
    total: Counts
    channels: dict[str, Counts] = field(default_factory=dict)


async def campaign_stats(session: AsyncSession, campaign_id: str) -> CampaignStats:
    """Shares, visits, unique visitors, conversions and sharer coupons of the campaign."""
    channels: dict[str, Counts] = {}
    rows = await session.execute(
        select(Share.channel, func.count(), func.count(Share.coupon_id))
        .where(Share.campaign_id == campaign_id)
        .group_by(Share.channel)
    )
    for channel, shares, coupons in rows:
        channels.setdefault(channel, Counts()).shares = int(shares)
        channels[channel].coupons = int(coupons)
    v = ShareVisit
    visit_rows = await session.execute(
        select(v.channel, func.count(), func.count(distinct(v.visitor)))
        .where(v.campaign_id == campaign_id)
        .group_by(v.channel)
    )
    for channel, visits, visitors in visit_rows:
        counts = channels.setdefault(channel, Counts())
        counts.visits, counts.unique_visitors = int(visits), int(visitors)
    c = ShareConversion
    conversion_rows = await session.execute(
        select(c.channel, func.count()).where(c.campaign_id == campaign_id).group_by(c.channel)
    )
    for channel, conversions in conversion_rows:
        channels.setdefault(channel, Counts()).conversions = int(conversions)
    unique = await session.scalar(
        select(func.count(distinct(v.visitor))).where(v.campaign_id == campaign_id)
    )
    total = Counts(
        shares=sum(x.shares for x in channels.values()),
        visits=sum(x.visits for x in channels.values()),
        unique_visitors=int(unique or 0),
        conversions=sum(x.conversions for x in channels.values()),
        coupons=sum(x.coupons for x in channels.values()),
    )
    return CampaignStats(total, dict(sorted(channels.items())))


SHARER_ORDER = Keyset((ShareSharer.sharer_id,), tuple[KeyId], descending=False)


@dataclass
class SharerRow:
    sharer_id: str
    sharer_role: str
    counts: Counts


async def sharer_stats(
    session: AsyncSession, campaign_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[SharerRow]:
    """Each sharer of the campaign with their counts, by sharer id."""
    page = await SHARER_ORDER.fetch(
        session,
        select(ShareSharer).where(ShareSharer.campaign_id == campaign_id),
        cursor=cursor,
        limit=limit,
    )
    ids: Sequence[str] = [s.sharer_id for s in page.items]
    visits: dict[str, tuple[int, int]] = {}
    conversions: dict[str, int] = {}
    coupons: dict[str, int] = {}
    if ids:
        v = ShareVisit
        for sharer, n, unique in await session.execute(
            select(v.sharer_id, func.count(), func.count(distinct(v.visitor)))
            .where(v.campaign_id == campaign_id, one_of(session, v.sharer_id, list(ids)))
            .group_by(v.sharer_id)
        ):
            visits[sharer] = (int(n), int(unique))
        c = ShareConversion
        for sharer, n in await session.execute(
            select(c.sharer_id, func.count())
            .where(c.campaign_id == campaign_id, one_of(session, c.sharer_id, list(ids)))
            .group_by(c.sharer_id)
        ):
            conversions[sharer] = int(n)
        for sharer, n in await session.execute(
            select(Share.sharer_id, func.count(Share.coupon_id))
            .where(Share.campaign_id == campaign_id, one_of(session, Share.sharer_id, list(ids)))
            .group_by(Share.sharer_id)
        ):
            coupons[sharer] = int(n)
    rows = [
        SharerRow(
            s.sharer_id,
            s.sharer_role,
            Counts(
                shares=s.shares,
                visits=visits.get(s.sharer_id, (0, 0))[0],
                unique_visitors=visits.get(s.sharer_id, (0, 0))[1],
                conversions=conversions.get(s.sharer_id, 0),
                coupons=coupons.get(s.sharer_id, 0),
            ),
        )
        for s in page.items
    ]
    return Slice(rows, page.next_cursor)
