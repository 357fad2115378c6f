"""The till: merchant staff verify a coupon, hold it while the sale is rung up, redeem it
exactly once, and may undo a redemption within the window.

A coupon is redeemable at a merchant when its campaign is that merchant's own, or an
operator's campaign the merchant joined (with a join code). Redeeming is one conditional
move to ``redeemed`` from ``usable``, or from ``held`` by this merchant (or by anyone whose
hold lapsed), so ten tills redeeming one coupon at once give one redemption; a partial
unique index (one standing redemption per coupon) backs it up. A provider's coupon is
redeemed at the provider too, by a call after the commit with the same exactly-once rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import service as campaigns
from incentive.config import live_config
from incentive.coupons import service
from incentive.coupons.errors import (
    CouponNotFound,
    CouponNotUsable,
    MinimumSpendNotMet,
    OtherMerchant,
    UndoWindowPassed,
)
from incentive.coupons.keys import HOLD_SECONDS, UNDO_WINDOW_SECONDS
from incentive.coupons.models import CODE_MAX_LENGTH, Coupon, CouponRedemption
from incentive.db import new_id, utcnow
from incentive.join_codes import service as join_codes
from incentive.kit.codes import normalize_code
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice


@dataclass(frozen=True)
class Staff:
    """Who is at the till: the merchant and the staff member (a user id)."""

    merchant_id: str
    user_id: str

    @property
    def actor(self) -> service.Actor:
        return service.Actor(self.user_id, "merchant")


@dataclass(frozen=True)
class Verdict:
    coupon: Coupon
    discount_fen: int | None  # for the amount given


def discount(coupon: Coupon, amount_fen: int) -> int:
    """What the coupon takes off ``amount_fen``: its face value or its rate (floored, capped),
    never more than the amount."""
    if coupon.face_value_fen is not None:
        off = coupon.face_value_fen
    else:
        off = min(amount_fen * (coupon.rate_bp or 0) // 10_000, coupon.max_discount_fen or 0)
    return min(off, amount_fen)


async def _by_code(session: AsyncSession, code: str) -> Coupon:
    wanted = normalize_code(code)
    coupon = None
    if 0 < len(wanted) <= CODE_MAX_LENGTH:
        coupon = await session.scalar(select(Coupon).where(Coupon.code == wanted))
    if coupon is None:
        raise CouponNotFound(f"no coupon has code {wanted[:CODE_MAX_LENGTH]}", code=wanted)
    return coupon


async def _accepted_here(session: AsyncSession, coupon: Coupon, merchant_id: str) -> None:
    campaign = await campaigns.campaign_facts(session, coupon.campaign_id)
    if campaign.merchant_id == merchant_id:
        return
    if campaign.owner_type == "operator" and await join_codes.has_joined(
        session, campaign.id, merchant_id
    ):
        return
    raise OtherMerchant(
        f"coupon {coupon.code} belongs to a campaign this merchant does not take part in",
        code=coupon.code,
    )


def _usable_by(merchant_id: str, now: datetime) -> ColumnElement[bool]:
    # Held by this merchant, or by anyone whose hold has lapsed.
    return or_(Coupon.held_by == merchant_id, Coupon.held_until <= now)


def _check_usable(coupon: Coupon, merchant_id: str, now: datetime) -> None:
    held_here = coupon.state == "held" and (
        coupon.held_by == merchant_id or (coupon.held_until or now) <= now
    )
    if coupon.state != "usable" and not held_here:
        raise CouponNotUsable(
            f"coupon {coupon.code} is {coupon.state}",
            code=coupon.code,
            state=coupon.state,
            reason=coupon.reason,
        )
    if not service.still_valid(coupon, now):
        raise CouponNotUsable(
            f"coupon {coupon.code} is valid from {coupon.valid_from.isoformat()} "
            f"until {coupon.valid_until.isoformat()}",
            code=coupon.code,
            state="expired" if now >= coupon.valid_until else "not-yet-valid",
        )


async def verify(
    session: AsyncSession, code: str, staff: Staff, amount_fen: int | None = None
) -> Verdict:
    """Is the coupon with ``code`` good at this till now: authentic (404), of a campaign this
    merchant takes part in (409 ``OtherMerchant``), usable and within its validity (409
    ``CouponNotUsable``), its minimum spend met by ``amount_fen`` if given (409)."""
    coupon = await _by_code(session, code)
    await _accepted_here(session, coupon, staff.merchant_id)
    _check_usable(coupon, staff.merchant_id, utcnow())
    if amount_fen is None:
        return Verdict(coupon, None)
    if amount_fen < coupon.min_spend_fen:
        raise MinimumSpendNotMet(
            f"coupon {coupon.code} needs a spend of at least {coupon.min_spend_fen} fen",
            code=coupon.code,
            min_spend_fen=coupon.min_spend_fen,
        )
    return Verdict(coupon, discount(coupon, amount_fen))


async def hold(session: AsyncSession, code: str, staff: Staff, amount_fen: int) -> Verdict:
    """Prepare: verify, then hold the coupon for this merchant for ``coupons.hold_seconds``
    (others are refused meanwhile; a lapsed hold is free for anyone)."""
    verdict = await verify(session, code, staff, amount_fen)
    coupon = verdict.coupon
    now = utcnow()
    until = now + timedelta(seconds=int(live_config.get(HOLD_SECONDS)))
    moved = await service.move(
        session,
        coupon.id,
        "usable",
        "held",
        staff.actor,
        "held at till",
        held_by=staff.merchant_id,
        held_until=until,
    ) or await service.move(
        session,
        coupon.id,
        "held",
        "held",
        staff.actor,
        "held at till again",
        only_if=_usable_by(staff.merchant_id, now),
        held_by=staff.merchant_id,
        held_until=until,
    )
    await session.refresh(coupon)
    if not moved:
        _check_usable(coupon, staff.merchant_id, now)
    return Verdict(coupon, verdict.discount_fen)


async def redeem(
    session: AsyncSession, code: str, staff: Staff, amount_fen: int
) -> CouponRedemption:
    """Commit: redeem the coupon once for a sale of ``amount_fen`` at this merchant (held
    by it, or usable). Exactly one redemption of a coupon under any concurrency: the loser
    gets 409 ``CouponNotUsable`` (state ``redeemed``). The route takes an
    ``Idempotency-Key``, so the same commit again answers the first result."""
    verdict = await verify(session, code, staff, amount_fen)
    coupon = verdict.coupon
    now = utcnow()
    # From the state just read first (one UPDATE in the common case), then the other.
    moved = False
    for state in ("usable", "held") if coupon.state == "usable" else ("held", "usable"):
        moved = await service.move(
            session,
            coupon.id,
            state,
            "redeemed",
            staff.actor,
            "redeemed at till",
            only_if=_usable_by(staff.merchant_id, now) if state == "held" else None,
            held_by=None,
            held_until=None,
        )
        if moved:
            break
    if not moved:
        await session.refresh(coupon)
        _check_usable(coupon, staff.merchant_id, now)
        raise CouponNotUsable(f"coupon {coupon.code} is {coupon.state}", state=coupon.state)
    redemption = CouponRedemption(
        id=new_id(),
        coupon_id=coupon.id,
        campaign_id=coupon.campaign_id,
        merchant_id=staff.merchant_id,
        staff_id=staff.user_id,
        amount_fen=amount_fen,
        discount_fen=verdict.discount_fen or 0,
        redeemed_at=now,
        provider_state="pending" if coupon.provider_id else None,
    )
    session.add(redemption)
    await session.flush()
    if coupon.provider_id is not None:
        await service.queue_call(session, "redeem", coupon, redemption.id)
    return redemption


async def undo(session: AsyncSession, redemption_id: str, staff: Staff) -> CouponRedemption:
    """Undo a redemption of this merchant within ``coupons.undo_window_seconds``: the coupon
    is usable again (409 ``UndoWindowPassed`` after the window; undoing twice answers the
    first undo). A provider's coupon is given back at the provider after the commit."""
    redemption = await session.get(CouponRedemption, redemption_id)
    if redemption is None or redemption.merchant_id != staff.merchant_id:
        raise CouponNotFound(
            f"redemption {redemption_id} does not exist", redemption_id=redemption_id
        )
    if redemption.undone_at is not None:
        return redemption
    now = utcnow()
    window = timedelta(seconds=int(live_config.get(UNDO_WINDOW_SECONDS)))
    if now > redemption.redeemed_at + window:
        raise UndoWindowPassed(
            f"redemption {redemption_id} is older than the undo window ({window})",
            redemption_id=redemption_id,
        )
    done = await session.execute(
        update(CouponRedemption)
        .where(CouponRedemption.id == redemption_id, CouponRedemption.undone_at.is_(None))
        .values(undone_at=now, undone_by=staff.user_id)
        .returning(CouponRedemption.id)
        .execution_options(synchronize_session=False)
    )
    if done.first() is not None:
        await service.move(
            session, redemption.coupon_id, "redeemed", "usable", staff.actor, "redemption undone"
        )
        coupon = await service.get_coupon(session, redemption.coupon_id)
        if coupon.provider_id is not None:
            await service.queue_call(session, "reverse", coupon, redemption_id)
    await session.refresh(redemption)
    return redemption


REDEMPTION_ORDER = Keyset(
    (CouponRedemption.redeemed_at, CouponRedemption.id), tuple[KeyTime, KeyId]
)


async def redemptions(
    session: AsyncSession, merchant_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[CouponRedemption]:
    stmt = select(CouponRedemption).where(CouponRedemption.merchant_id == merchant_id)
    return await REDEMPTION_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)
