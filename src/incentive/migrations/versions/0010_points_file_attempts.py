"""points files end instead of sticking: stage attempts, decrypted-size and record limits,
points beyond 64 bits kept as text

Revision ID: 0010_points_file_attempts
Revises: 0009_money_bigint
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

CHECKS = {
    "max_records_positive": "max_records > 0",
    "max_plain_bytes_positive": "max_plain_bytes > 0",
}
revision = "0010_points_file_attempts"
down_revision = "0009_money_bigint"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partner_points_settings") as batch:
        batch.add_column(
            sa.Column("max_records", sa.BigInteger(), nullable=False, server_default="2000000")
        )
        batch.add_column(sa.Column("max_plain_bytes", sa.BigInteger(), nullable=True))
        for name, condition in CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_partner_points_settings_{name}"), condition)
    with op.batch_alter_table("points_files") as batch:
        batch.add_column(
            sa.Column("stage_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("stage_error", sa.Text(), nullable=False, server_default=""))
        batch.alter_column("points_total", existing_type=sa.BigInteger(), nullable=True)
    with op.batch_alter_table("points_records") as batch:
        batch.alter_column("points", existing_type=sa.BigInteger(), nullable=True)
        batch.add_column(sa.Column("points_text", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM points_records WHERE points IS NULL")
    op.execute("UPDATE points_files SET points_total = 0 WHERE points_total IS NULL")
    with op.batch_alter_table("points_records") as batch:
        batch.drop_column("points_text")
        batch.alter_column("points", existing_type=sa.BigInteger(), nullable=False)
    with op.batch_alter_table("points_files") as batch:
        batch.alter_column("points_total", existing_type=sa.BigInteger(), nullable=False)
        batch.drop_column("stage_error")
        batch.drop_column("stage_attempts")
    with op.batch_alter_table("partner_points_settings") as batch:
        for name in CHECKS:
            batch.drop_constraint(op.f(f"ck_partner_points_settings_{name}"), type_="check")
        batch.drop_column("max_plain_bytes")
        batch.drop_column("max_records")
