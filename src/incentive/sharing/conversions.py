"""Conversions: an activity attributed to a share (registered as an activities observer).

A customer's coupon claim or flash-sale purchase here (``campaigns.participation``) converts
for its campaign when the campaign's sharing counts ``claim`` / ``purchase`` and the customer
last visited one of its shares within the window.

An activity converts for a campaign when the campaign's sharing is enabled and counts its
type (``conversion_types``), and either

- it carries a share's token in ``attributes.share`` (an activity at most
  ``attribution_hours`` after that share was made; this takes precedence), or
- its customer, signed in, last visited a share of the campaign (``share_touches``: last
  share wins) at most ``attribution_hours`` before the activity occurred (and not more than
  ``CLOCK_SKEW`` after it: senders' clocks are not ours).

An activity at another merchant (``merchant`` given and not the campaign's) never converts
for a merchant's campaign: a shop's share brings custom to that shop (as a merchant's reward
campaign refuses ``other-merchant``). A sharer's own activity never converts for their own
share (their visits of it are not touches either). A follow-up (a refund) never converts.
One conversion per (activity, campaign): the primary key, ``ON CONFLICT DO NOTHING``.
Anonymous visits (cookie or address) count as visits but cannot be tied to an activity's
customer; the token in ``attributes.share`` is how a sender attributes those.

Cost when nothing is to be attributed: one query by primary-key prefix (the batch's
customers' touches), plus one by the unique token only when an activity carries one (and,
when there is something to attribute, one by primary key per campaign for its owner).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import CLOCK_SKEW, ActivityFacts
from incentive.campaigns.participation import Participation
from incentive.db import insert as db_insert
from incentive.db import one_of, utcnow
from incentive.kit.codes import is_public_token
from incentive.sharing.models import Share, ShareConversion, ShareTouch, SharingSettings
from incentive.sharing.schemas import ConversionType

CONVERTIBLE = frozenset(ConversionType.__args__)  # type: ignore[attr-defined]
_CONVERSIONS = cast(Table, ShareConversion.__table__)


def _window(found: SharingSettings) -> timedelta:
    return timedelta(hours=found.attribution_hours)


def _token(activity: ActivityFacts) -> str | None:
    raw = activity.attributes.get("share")
    return raw if is_public_token(raw) else None


async def observe(session: AsyncSession, activities: Sequence[ActivityFacts]) -> None:
    """Record the conversions among ``activities`` (see the module contract)."""
    candidates = [a for a in activities if a.refers_to is None and a.type in CONVERTIBLE]
    if not candidates:
        return
    customers = sorted({a.customer for a in candidates})
    touched: dict[str, list[tuple[Any, Share]]] = {}
    rows = await session.execute(
        select(ShareTouch.customer_id, ShareTouch.visited_at, Share)
        .join(Share, Share.id == ShareTouch.share_id)
        .where(one_of(session, ShareTouch.customer_id, customers))
    )
    for customer_id, visited_at, found in rows:
        touched.setdefault(customer_id, []).append((visited_at, found))
    tokens = sorted({t for a in candidates if (t := _token(a)) is not None})
    by_token: dict[str, Share] = {}
    if tokens:
        by_token = {
            s.token: s for s in await session.scalars(select(Share).where(Share.token.in_(tokens)))
        }
    if not touched and not by_token:
        return
    campaign_ids = sorted(
        {s.campaign_id for pairs in touched.values() for _, s in pairs}
        | {s.campaign_id for s in by_token.values()}
    )
    settings = {
        s.campaign_id: s
        for s in await session.scalars(
            select(SharingSettings).where(
                SharingSettings.campaign_id.in_(campaign_ids), SharingSettings.enabled.is_(True)
            )
        )
    }
    # Whose campaign: a merchant's counts activities at that merchant only.
    merchant_of = {}
    for campaign_id in settings:
        owner = await campaigns.campaign_facts(session, campaign_id)
        merchant_of[campaign_id] = owner.merchant_id if owner.owner_type == "merchant" else None
    now = utcnow()
    out: list[dict[str, Any]] = []
    for activity in candidates:
        chosen: dict[str, tuple[Share, str]] = {}

        def counts(campaign_id: str, activity: ActivityFacts = activity) -> bool:
            found = settings.get(campaign_id)
            if found is None or activity.type not in found.conversion_types:
                return False
            merchant = merchant_of[campaign_id]
            return merchant is None or activity.merchant in (None, merchant)

        token = _token(activity)
        named = by_token.get(token) if token else None
        if (
            named is not None
            and counts(named.campaign_id)
            and named.sharer_id != activity.customer
            and named.created_at - CLOCK_SKEW
            <= activity.occurred_at
            <= named.created_at + _window(settings[named.campaign_id])
        ):
            chosen[named.campaign_id] = (named, "token")
        for visited_at, found in touched.get(activity.customer, ()):
            if found.campaign_id in chosen or not counts(found.campaign_id):
                continue
            window = _window(settings[found.campaign_id])
            if (
                found.sharer_id != activity.customer
                and visited_at - CLOCK_SKEW <= activity.occurred_at <= visited_at + window
            ):
                chosen[found.campaign_id] = (found, "visit")
        for campaign_id, (found, via) in sorted(chosen.items()):
            out.append(
                {
                    "source": "activity",
                    "ref": str(activity.id),
                    "campaign_id": campaign_id,
                    "share_id": found.id,
                    "sharer_id": found.sharer_id,
                    "channel": found.channel,
                    "customer_id": activity.customer,
                    "type": activity.type,
                    "via": via,
                    "occurred_at": activity.occurred_at,
                    "recorded_at": now,
                }
            )
    if out:
        await session.execute(
            db_insert(session, _CONVERSIONS).on_conflict_do_nothing(
                index_elements=["source", "ref", "campaign_id"]
            ),
            out,
        )


async def observe_participation(session: AsyncSession, done: Sequence[Participation]) -> None:
    """Claims and purchases here convert for their campaign when its sharing counts their
    kind and the customer last visited one of its shares within the window (not their own:
    their visits of it are no touches). One query for the batch when nobody touched."""
    counted = [d for d in done if d.kind in CONVERTIBLE]
    if not counted:
        return
    rows = await session.execute(
        select(ShareTouch, Share, SharingSettings)
        .join(Share, Share.id == ShareTouch.share_id)
        .join(SharingSettings, SharingSettings.campaign_id == ShareTouch.campaign_id)
        .where(
            one_of(session, ShareTouch.customer_id, sorted({d.customer for d in counted})),
            SharingSettings.enabled.is_(True),
        )
    )
    touches = {(t.customer_id, t.campaign_id): (t, share, found) for t, share, found in rows}
    out = []
    now = utcnow()
    for d in counted:
        found_touch = touches.get((d.customer, d.campaign_id))
        if found_touch is None:
            continue
        touch, share, settings = found_touch
        window = _window(settings)
        if (
            d.kind in settings.conversion_types
            and share.sharer_id != d.customer
            and touch.visited_at - CLOCK_SKEW <= d.occurred_at <= touch.visited_at + window
        ):
            out.append(
                {
                    "source": d.kind,
                    "ref": d.ref,
                    "campaign_id": d.campaign_id,
                    "share_id": share.id,
                    "sharer_id": share.sharer_id,
                    "channel": share.channel,
                    "customer_id": d.customer,
                    "type": d.kind,
                    "via": "visit",
                    "occurred_at": d.occurred_at,
                    "recorded_at": now,
                }
            )
    if out:
        await session.execute(
            db_insert(session, _CONVERSIONS).on_conflict_do_nothing(
                index_elements=["source", "ref", "campaign_id"]
            ),
            out,
        )
