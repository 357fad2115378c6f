"""Reward errors. ``except RewardError`` catches every refusal of the rewards domain."""

from __future__ import annotations

from incentive.errors import Conflict, IncentiveError, NotFound


class RewardError(IncentiveError):
    """Marker base of the rewards' refusals (combined with an HTTP-shaped base)."""


class RewardNotFound(RewardError, NotFound):
    slug = "reward-not-found"
    title = "Reward not found"


class NoRewardAvailable(RewardError, Conflict):
    """Every reward of the chain was tried and none could serve; ``chain`` in the problem
    says why each was skipped."""

    slug = "no-reward-available"
    title = "No reward available"


class RewardLimitReached(RewardError, Conflict):
    """The customer already got as many rewards from the campaign as it allows."""

    slug = "reward-limit-reached"
    title = "Per-customer reward limit reached"


class NotRewarding(RewardError, Conflict):
    """The campaign gives no rewards now (not active, or outside its window)."""

    slug = "not-rewarding"
    title = "Campaign not giving rewards now"


class RewardTaken(RewardError, Conflict):
    """A reward with this code is already in the campaign's chain."""

    slug = "reward-exists"
    title = "Reward code taken"
