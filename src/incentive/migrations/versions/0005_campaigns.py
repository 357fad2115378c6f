"""campaigns

Revision ID: 0005_campaigns
Revises: 0004_events
"""

from __future__ import annotations

revision = "0005_campaigns"
down_revision = "0004_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
