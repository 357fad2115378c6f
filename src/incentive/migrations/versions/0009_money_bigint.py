"""every money, points and stock column is BIGINT; the audit log's id too

``flash_sale_purchases.quantity`` (units of stock) was INTEGER, and ``audit_log.id`` (one row
per audited call) could outgrow 2^31. ``tests/test_models_bigint.py`` keeps every other
INTEGER column explained. On SQLite an integer primary key stays INTEGER (the rowid alias).

Revision ID: 0009_money_bigint
Revises: 0008_flash_sale_rules
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_money_bigint"
down_revision = "0008_flash_sale_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flash_sale_purchases") as batch:
        batch.alter_column("quantity", existing_type=sa.Integer(), type_=sa.BigInteger())
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("audit_log", "id", existing_type=sa.Integer(), type_=sa.BigInteger())
        _sequence_as("bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        _sequence_as("integer")
        op.alter_column("audit_log", "id", existing_type=sa.BigInteger(), type_=sa.Integer())
    with op.batch_alter_table("flash_sale_purchases") as batch:
        batch.alter_column("quantity", existing_type=sa.BigInteger(), type_=sa.Integer())


def _sequence_as(sql_type: str) -> None:
    """A serial's sequence keeps its own type (and maximum) when its column is altered."""
    sequence = op.get_bind().scalar(sa.text("SELECT pg_get_serial_sequence('audit_log', 'id')"))
    op.execute(f"ALTER SEQUENCE {sequence} AS {sql_type}")
