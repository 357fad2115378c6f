"""ledger

Revision ID: 0002_ledger
Revises: 0001_auth
"""

from __future__ import annotations

revision = "0002_ledger"
down_revision = "0001_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
