"""Review errors."""

from __future__ import annotations

from incentive.errors import Conflict, NotFound


class WordListNotFound(NotFound):
    slug = "word-list-not-found"
    title = "Word list not found"


class ReviewConflict(Conflict):
    """The review decision cannot be made now (the campaign moved on, or was edited since
    the verdict being overridden)."""

    slug = "review-conflict"
    title = "Review decision refused"
