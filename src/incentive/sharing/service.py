"""Sharing: each campaign's settings, shares with their sharer coupons, and visits.

Contract:

- Settings belong to the campaign as reviewed: its manager (``campaigns.managed_campaign``)
  sets them only while it is ``draft`` or ``rejected`` (409 ``campaign-not-editable``
  otherwise). The write goes through ``campaigns.service.edit_campaign`` with no change,
  whose conditional ``UPDATE … WHERE status IN ('draft', 'rejected')`` bumps the campaign's
  version and holds its row until the commit, so a concurrent submission waits and reviews
  what was set. A coupon batch must be of a campaign of the same owner (422
  ``coupon_batch_id``). Audited as ``sharing.settings``.
- A share is made by a customer, the campaign's merchant's staff or an operator (another
  merchant's staff: 403), for an active campaign whose sharing is enabled (409
  ``sharing-off``). Its token is 16 URL-safe characters (96 random bits).
- The sharer coupon: customers only (merchant staff and operators share for their business,
  not for a reward). At most ``coupons_per_sharer`` per sharer and campaign under any
  concurrency: one ``INSERT … ON CONFLICT DO UPDATE … WHERE coupons < :limit RETURNING``
  counts it, then ``coupons.service.issue`` gives it, both in one savepoint of the share's
  transaction. A coupon that cannot be given (limit, stock, batch closed) rolls the savepoint
  back and the share is kept with ``coupon_refusal`` saying why.
- A visit is counted once per share, visitor and UTC day (primary key, ``ON CONFLICT DO
  NOTHING``); a signed-in customer's visit of someone else's share also becomes the share
  that customer last visited for the campaign (``share_touches``, the attribution of
  ``conversions.py``).
- Nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.campaigns.errors import CampaignNotEditable
from incentive.campaigns.kinds import CampaignFacts
from incentive.coupons import batches as coupon_batches
from incentive.coupons import service as coupons
from incentive.coupons.errors import BatchClosed, BatchNotFound, ClaimLimitReached, CouponsExhausted
from incentive.db import insert as db_insert
from incentive.db import new_id, per_dialect, utcnow
from incentive.errors import Forbidden
from incentive.kit.codes import public_token
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice
from incentive.sharing.errors import ShareNotFound, SharingOff
from incentive.sharing.models import Share, ShareSharer, ShareTouch, ShareVisit, SharingSettings
from incentive.sharing.schemas import SharingSettingsIn

_SHARERS = cast(Table, ShareSharer.__table__)
_VISITS = cast(Table, ShareVisit.__table__)
_TOUCHES = cast(Table, ShareTouch.__table__)


@dataclass(frozen=True)
class Defaults:
    enabled: bool = False
    coupon_batch_id: str | None = None
    coupons_per_sharer: int = 1
    attribution_hours: int = 72
    conversion_types: tuple[str, ...] = ("payment",)
    updated_at: datetime | None = None


# --------------------------------------------------------------------------- settings


async def settings_of(session: AsyncSession, campaign_id: str) -> SharingSettings | None:
    return await session.get(SharingSettings, campaign_id, populate_existing=True)


async def read_settings(
    session: AsyncSession, principal: Principal, campaign_id: str
) -> tuple[str, SharingSettings | Defaults]:
    """The settings of a campaign the caller sees (the defaults if never set)."""
    campaign = await campaigns.visible_campaign(session, principal, campaign_id)
    return campaign.id, (await settings_of(session, campaign.id)) or Defaults()


async def put_settings(
    session: AsyncSession, principal: Principal, campaign_id: str, body: SharingSettingsIn
) -> SharingSettings:
    """Set a draft or rejected campaign's sharing settings (see the module contract)."""
    campaign = campaigns.facts(await campaigns.managed_campaign(session, principal, campaign_id))
    if campaign.status not in campaigns.EDITABLE:
        raise CampaignNotEditable(
            f"sharing of a {campaign.status} campaign cannot change; only draft or rejected",
            campaign_status=campaign.status,
        )
    if body.coupon_batch_id is not None:
        await coupon_batches.check_same_owner(
            session, campaign, body.coupon_batch_id, "coupon_batch_id"
        )
    # The campaign's own conditional edit: still editable now, version bumped, row held.
    await campaigns.edit_campaign(session, principal, campaign_id, changes={})
    values = body.model_dump()
    row = await settings_of(session, campaign_id)
    if row is None:
        row = SharingSettings(campaign_id=campaign_id)
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_by = principal.id
    row.updated_at = utcnow()
    await session.flush()
    await record_audit(session, principal, "sharing.settings", f"campaign:{campaign_id}", values)
    return row


# --------------------------------------------------------------------------- shares


@dataclass
class Shared:
    share: Share
    settings: SharingSettings


def _may_share(principal: Principal, campaign: CampaignFacts) -> bool:
    if principal.role in ("customer", "operator"):
        return True
    return principal.role == "merchant" and campaigns.can_manage(principal, campaign)


@per_dialect
def _count_coupon(dialect: str) -> Any:
    c = _SHARERS.c
    return (
        db_insert(dialect, _SHARERS)
        .values(
            campaign_id=bindparam("campaign"),
            sharer_id=bindparam("sharer"),
            sharer_role=bindparam("role"),
            shares=0,
            coupons=1,
        )
        .on_conflict_do_update(
            index_elements=["campaign_id", "sharer_id"],
            set_={"coupons": c.coupons + 1},
            where=c.coupons < bindparam("limit"),
        )
        .returning(c.coupons)
    )


@per_dialect
def _count_share(dialect: str) -> Any:
    c = _SHARERS.c
    return (
        db_insert(dialect, _SHARERS)
        .values(
            campaign_id=bindparam("campaign"),
            sharer_id=bindparam("sharer"),
            sharer_role=bindparam("role"),
            shares=1,
            coupons=0,
        )
        .on_conflict_do_update(
            index_elements=["campaign_id", "sharer_id"], set_={"shares": c.shares + 1}
        )
    )


async def _sharer_coupon(
    session: AsyncSession, principal: Principal, campaign_id: str, settings: SharingSettings
) -> tuple[str | None, str | None]:
    """(coupon id, None) or (None, why not) — see the module contract."""
    if settings.coupon_batch_id is None:
        return None, "no-coupon-configured"
    if principal.role != "customer":
        return None, "not-a-customer"
    params = {
        "campaign": campaign_id,
        "sharer": principal.id,
        "role": principal.role,
        "limit": settings.coupons_per_sharer,
    }
    actor = coupons.Actor(f"share:{campaign_id}", "system")
    try:
        async with session.begin_nested():
            if (await session.execute(_count_coupon(session), params)).first() is None:
                return None, "sharer-limit-reached"
            coupon = await coupons.issue(
                session, settings.coupon_batch_id, principal.id, actor, "share"
            )
    except CouponsExhausted:
        return None, "out-of-stock"
    except BatchClosed:
        return None, "batch-closed"
    except ClaimLimitReached:
        return None, "limit-reached"
    except BatchNotFound:
        return None, "batch-missing"
    return coupon.id, None


async def share(
    session: AsyncSession, principal: Principal, campaign_id: str, channel: str
) -> Shared:
    """Store a share of the campaign by the caller, with its sharer coupon if any."""
    campaign = campaigns.facts(await campaigns.visible_campaign(session, principal, campaign_id))
    if not _may_share(principal, campaign):
        raise Forbidden("customers, the campaign's merchant's staff and operators share it")
    settings = await settings_of(session, campaign_id)
    if settings is None or not settings.enabled:
        raise SharingOff("sharing is not enabled for this campaign", reason="disabled")
    if campaign.status != "active":
        raise SharingOff(f"a {campaign.status} campaign takes no shares", reason="not-active")
    coupon_id, refusal = await _sharer_coupon(session, principal, campaign_id, settings)
    await session.execute(
        _count_share(session),
        {"campaign": campaign_id, "sharer": principal.id, "role": principal.role},
    )
    row = Share(
        id=new_id(),
        token=public_token(),
        campaign_id=campaign_id,
        sharer_id=principal.id,
        sharer_role=principal.role,
        channel=channel,
        coupon_id=coupon_id,
        coupon_refusal=refusal,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return Shared(row, settings)


async def by_token(session: AsyncSession, token: str) -> Share:
    found = await session.scalar(select(Share).where(Share.token == token))
    if found is None:
        raise ShareNotFound(f"no share {token!r}", token=token)
    return found


SHARE_ORDER = Keyset((Share.created_at, Share.id), tuple[KeyTime, KeyId])


async def shares_of(
    session: AsyncSession, sharer_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[Share]:
    """The sharer's shares of every campaign, newest first."""
    stmt = select(Share).where(Share.sharer_id == sharer_id)
    return await SHARE_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


# --------------------------------------------------------------------------- visits


@per_dialect
def _visit_statement(dialect: str) -> Any:
    return (
        db_insert(dialect, _VISITS)
        .on_conflict_do_nothing(index_elements=["share_id", "visitor", "day"])
        .returning(_VISITS.c.share_id)
    )


@per_dialect
def _touch_statement(dialect: str) -> Any:
    c = _TOUCHES.c
    stmt = db_insert(dialect, _TOUCHES)
    return stmt.on_conflict_do_update(
        index_elements=["customer_id", "campaign_id"],
        set_={"share_id": stmt.excluded.share_id, "visited_at": stmt.excluded.visited_at},
        where=c.visited_at <= stmt.excluded.visited_at,
    )


async def visit(
    session: AsyncSession,
    token: str,
    visitor: str,
    customer_id: str | None,
    now: datetime | None = None,
) -> tuple[Share, bool]:
    """Count a visit of the share (once per visitor and UTC day); (the share, counted)."""
    found = await by_token(session, token)
    at = now or utcnow()
    counted = (
        await session.execute(
            _visit_statement(session),
            {
                "share_id": found.id,
                "visitor": visitor,
                "day": at.date().isoformat(),
                "campaign_id": found.campaign_id,
                "sharer_id": found.sharer_id,
                "channel": found.channel,
                "customer_id": customer_id,
                "visited_at": at,
            },
        )
    ).first() is not None
    if customer_id is not None and customer_id != found.sharer_id:
        await session.execute(
            _touch_statement(session),
            {
                "customer_id": customer_id,
                "campaign_id": found.campaign_id,
                "share_id": found.id,
                "visited_at": at,
            },
        )
    return found, counted
