"""events

Revision ID: 0004_events
Revises: 0003_config
"""

from __future__ import annotations

revision = "0004_events"
down_revision = "0003_config"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
