"""Template errors."""

from __future__ import annotations

from incentive.errors import Conflict, NotFound


class TemplateNotFound(NotFound):
    """No such template (or version), or not one the caller may use."""

    slug = "template-not-found"
    title = "Template not found"


class TemplatePublished(Conflict):
    """A published or retired template version never changes; make a new version."""

    slug = "template-published"
    title = "Template version is published"
