"""Coupon errors. ``except CouponError`` catches every refusal of the coupons domain."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, NotFound, Unauthorized


class CouponError(IncentiveError):
    """Marker base of the coupons' refusals (combined with an HTTP-shaped base)."""


class CouponNotFound(CouponError, NotFound):
    """No such coupon, or not one the caller may see (codes are looked up alike)."""

    slug = "coupon-not-found"
    title = "Coupon not found"


class BatchNotFound(CouponError, NotFound):
    slug = "coupon-batch-not-found"
    title = "Coupon batch not found"


class ProviderNotFound(CouponError, NotFound):
    slug = "coupon-provider-not-found"
    title = "Coupon provider not found"


class BatchClosed(CouponError, Conflict):
    """The batch takes no claims now: its campaign is not active, or the provider paused,
    stopped or exhausted it."""

    slug = "coupon-batch-closed"
    title = "Coupon batch not open for claims"


class CouponsExhausted(CouponError, Conflict):
    """No coupon left to claim in the batch."""

    slug = "coupons-exhausted"
    title = "No coupons left"


class ClaimLimitReached(CouponError, Conflict):
    """The customer holds as many coupons of the batch as the campaign allows."""

    slug = "claim-limit-reached"
    title = "Per-customer claim limit reached"


class CouponNotUsable(CouponError, Conflict):
    """The coupon is not in a state that allows this (locked, used, expired, revoked …);
    ``state`` and ``reason`` in the problem say which."""

    slug = "coupon-not-usable"
    title = "Coupon not usable"


class OtherMerchant(CouponError, Conflict):
    """The coupon belongs to a campaign this merchant does not take part in."""

    slug = "coupon-other-merchant"
    title = "Coupon not valid at this merchant"


class MinimumSpendNotMet(CouponError, Conflict):
    slug = "min-spend-not-met"
    title = "Minimum spend not met"


class UndoWindowPassed(CouponError, Conflict):
    slug = "undo-window-passed"
    title = "Redemption can no longer be undone"


class ProviderTaken(CouponError, Conflict):
    """A provider with this code exists already."""

    slug = "coupon-provider-exists"
    title = "Coupon provider exists"


class ProviderDisabled(CouponError, Conflict):
    """The provider is disabled: its webhooks are refused (it may send them again later)."""

    slug = "coupon-provider-disabled"
    title = "Coupon provider disabled"


class BadWebhookSignature(CouponError, Unauthorized):
    """A provider's webhook whose signature does not verify (missing, stale, wrong)."""

    slug = "bad-webhook-signature"
    title = "Webhook signature rejected"
