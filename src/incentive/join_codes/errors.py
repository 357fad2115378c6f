"""Join-code errors. ``except JoinCodeError`` catches every refusal of the join codes."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, NotFound


class JoinCodeError(IncentiveError):
    """Marker base of the join codes' refusals (combined with an HTTP-shaped base)."""


class JoinCodeNotFound(JoinCodeError, NotFound):
    """No such code (codes of every campaign are looked up alike: nothing is revealed)."""

    slug = "join-code-not-found"
    title = "Join code not found"


class CodeUsed(JoinCodeError, Conflict):
    """The code was already redeemed (by this merchant or another)."""

    slug = "code-used"
    title = "Join code already used"


class CodeVoid(JoinCodeError, Conflict):
    """The code was voided by an operator."""

    slug = "code-void"
    title = "Join code voided"


class AlreadyJoined(JoinCodeError, Conflict):
    """The merchant already joined this campaign (with another code); this one stays unused."""

    slug = "already-joined"
    title = "Merchant already joined the campaign"
