"""Campaign errors. ``except CampaignError`` catches every refusal of the campaign core."""

from __future__ import annotations

from typing import Any

from incentive.errors import Conflict, IncentiveError


class CampaignError(IncentiveError):
    """Marker base of the campaign core's refusals (combined with an HTTP-shaped base)."""


class CampaignClosed(CampaignError, Conflict):
    """The campaign is ended or cancelled and takes no more of this (budget, say)."""

    slug = "campaign-conflict"
    title = "Campaign refused the change"


class InvalidTransition(CampaignError, Conflict):
    """The campaign's status cannot move from ``from`` to ``to`` (now, or by this caller)."""

    slug = "invalid-transition"
    title = "Invalid status transition"

    def __init__(
        self, from_status: str, to_status: str, detail: str | None = None, **extra: Any
    ) -> None:
        super().__init__(
            detail or f"cannot move a campaign from {from_status} to {to_status}",
            **{"from": from_status, "to": to_status, **extra},
        )
        self.from_status = from_status
        self.to_status = to_status


class CampaignNotEditable(CampaignError, Conflict):
    """Only draft and rejected campaigns can be edited."""

    slug = "campaign-not-editable"
    title = "Campaign cannot be edited in its status"


class CampaignVersionConflict(CampaignError, Conflict):
    """The caller's ``version`` is not the campaign's current one (someone changed it)."""

    slug = "campaign-version-conflict"
    title = "Campaign changed since it was read"
