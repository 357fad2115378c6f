"""The till over HTTP: merchant staff verify, hold and redeem coupons, undo a redemption
within the window, and list their merchant's redemptions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from incentive.auth.principal import Principal, require_roles
from incentive.coupons import till
from incentive.coupons.errors import (
    CouponNotFound,
    CouponNotUsable,
    MinimumSpendNotMet,
    OtherMerchant,
    UndoWindowPassed,
)
from incentive.coupons.metrics import REDEMPTIONS
from incentive.coupons.schemas import RedemptionOut, RedemptionPage, SaleIn, VerdictOut, VerifyIn
from incentive.deps import Session
from incentive.errors import AUTHENTICATED, VALIDATION, Forbidden, IdempotencyConflict, problems
from incentive.kit.idempotency import idempotent
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.pagination import DEFAULT_LIMIT, Cursor, Limit

router = APIRouter(prefix="/till", tags=["till"], route_class=JSONBodyRoute)

Id = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
Staff = Annotated[Principal, require_roles("merchant")]
SEEING = (*AUTHENTICATED, *VALIDATION, Forbidden)


def _staff(principal: Principal) -> till.Staff:
    if principal.merchant_id is None:
        raise Forbidden("only staff of a merchant work a till")
    return till.Staff(principal.merchant_id, principal.id)


def _verdict(verdict: till.Verdict) -> VerdictOut:
    c = verdict.coupon
    return VerdictOut(
        code=c.code,
        coupon_id=c.id,
        state=c.state,
        discount_fen=verdict.discount_fen,
        min_spend_fen=c.min_spend_fen,
        valid_until=c.valid_until,
        held_until=c.held_until if c.state == "held" else None,
    )


TILL = (*SEEING, CouponNotFound, OtherMerchant, CouponNotUsable, MinimumSpendNotMet)


@router.post(
    "/verifications",
    name="verify_coupon",
    response_model=VerdictOut,
    responses=problems(*TILL),
)
async def verify(body: VerifyIn, principal: Staff, session: Session) -> VerdictOut:
    """Is this coupon code (typed or scanned) good here and now: authentic (404), of a
    campaign this merchant takes part in (409 `coupon-other-merchant`), usable and valid
    (409 `coupon-not-usable`), minimum spend met by `amount_fen` (409)? Changes nothing."""
    return _verdict(await till.verify(session, body.code, _staff(principal), body.amount_fen))


@router.post(
    "/holds",
    name="hold_coupon",
    response_model=VerdictOut,
    responses=problems(*TILL),
)
async def hold(body: SaleIn, principal: Staff, session: Session) -> VerdictOut:
    """Prepare a redemption: verify, then hold the coupon for this merchant for
    `coupons.hold_seconds` while the sale is rung up (other tills are refused meanwhile)."""
    return _verdict(await till.hold(session, body.code, _staff(principal), body.amount_fen))


@router.post(
    "/redemptions",
    name="redeem_coupon",
    response_model=RedemptionOut,
    status_code=201,
    responses=problems(*TILL, IdempotencyConflict),
)
@idempotent(status_code=201)
async def redeem(body: SaleIn, principal: Staff, session: Session) -> RedemptionOut:
    """Commit: redeem the coupon for this sale, exactly once under any concurrency (a
    losing till gets 409 `coupon-not-usable`). Requires `Idempotency-Key`: the same commit
    again answers the first result."""
    try:
        done = await till.redeem(session, body.code, _staff(principal), body.amount_fen)
    except Exception as exc:
        REDEMPTIONS.labels(getattr(exc, "slug", "error")).inc()
        raise
    REDEMPTIONS.labels("redeemed").inc()
    return RedemptionOut.model_validate(done)


@router.post(
    "/redemptions/{redemption_id}/undo",
    name="undo_coupon_redemption",
    response_model=RedemptionOut,
    responses=problems(*SEEING, CouponNotFound, UndoWindowPassed),
)
async def undo(redemption_id: Id, principal: Staff, session: Session) -> RedemptionOut:
    """Undo one of this merchant's redemptions within `coupons.undo_window_seconds`: the
    coupon is usable again. 409 `undo-window-passed` after it; undoing twice is harmless."""
    return RedemptionOut.model_validate(await till.undo(session, redemption_id, _staff(principal)))


@router.get(
    "/redemptions",
    name="list_coupon_redemptions",
    response_model=RedemptionPage,
    responses=problems(*SEEING),
)
async def redemptions(
    principal: Staff, session: Session, cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT
) -> RedemptionPage:
    """This merchant's redemptions, newest first, with their provider confirmation."""
    page = await till.redemptions(
        session, _staff(principal).merchant_id, cursor=cursor, limit=limit
    )
    return RedemptionPage.of(page, RedemptionOut.model_validate)
