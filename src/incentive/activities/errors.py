"""Activity errors. ``except ActivityError`` catches every refusal of the activities."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, NotFound


class ActivityError(IncentiveError):
    """Marker base of the activities' refusals (combined with an HTTP-shaped base)."""


class ActivityNotFound(ActivityError, NotFound):
    slug = "activity-not-found"
    title = "Activity not found"


class ActivityIdReused(ActivityError, Conflict):
    """The sender's id was sent before with another body."""

    slug = "activity-id-reused"
    title = "Activity id reused"
