"""Imports every domain's tables so Base.metadata (and Alembic) sees the whole schema."""

from incentive.auth import models as auth_models  # noqa: F401
