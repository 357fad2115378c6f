"""Referral errors. ``except ReferralError`` catches every refusal of the referrals domain."""

from __future__ import annotations

from incentive.errors import Conflict, Forbidden, IncentiveError, NotFound


class ReferralError(IncentiveError):
    """Marker base of the referrals domain's refusals (combined with an HTTP-shaped base)."""


class InviteNotFound(ReferralError, NotFound):
    """No invite has this token, or it expired (``reason``: ``unknown`` or ``expired``)."""

    slug = "invite-not-found"
    title = "Invite not found"


class MayNotRefer(ReferralError, Forbidden):
    """The caller may not invite for this campaign (``reason``: ``role``, ``account-age``,
    ``daily-cap``, ``campaign-cap`` or ``invite-cap``; ``rule`` names the rule or live key)."""

    slug = "may-not-refer"
    title = "You may not refer for this campaign"


class ReferralsClosed(ReferralError, Conflict):
    """The campaign takes no invites or acceptances now (``reason``: ``not-active`` or
    ``not-a-referral-campaign``)."""

    slug = "referrals-closed"
    title = "Campaign takes no referrals now"
