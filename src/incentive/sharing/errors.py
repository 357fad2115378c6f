"""Sharing errors. ``except SharingError`` catches every refusal of the sharing domain."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, NotFound


class SharingError(IncentiveError):
    """Marker base of the sharing domain's refusals (combined with an HTTP-shaped base)."""


class ShareNotFound(SharingError, NotFound):
    """No share has this token (or the caller may not see it)."""

    slug = "share-not-found"
    title = "Share not found"


class SharingOff(SharingError, Conflict):
    """The campaign takes no shares now: sharing is not enabled for it, or it is not active
    (``reason``: ``disabled`` or ``not-active``)."""

    slug = "sharing-off"
    title = "Campaign not shared now"
