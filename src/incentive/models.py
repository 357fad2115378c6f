"""Imports every domain's tables (``domains.DOMAINS``) so Base.metadata (and Alembic) sees the
whole schema."""

from incentive import domains

domains.load()
