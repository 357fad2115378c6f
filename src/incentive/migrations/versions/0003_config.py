"""config

Revision ID: 0003_config
Revises: 0002_ledger
"""

from __future__ import annotations

revision = "0003_config"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
