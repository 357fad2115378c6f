"""Data-model errors."""

from __future__ import annotations

from incentive.errors import Conflict, NotFound


class DataModelNotFound(NotFound):
    """No such data model (or version), or not one the caller may read."""

    slug = "data-model-not-found"
    title = "Data model not found"


class DataModelExists(Conflict):
    """A data model with this id exists; change it instead (a new version)."""

    slug = "data-model-exists"
    title = "Data model exists"
