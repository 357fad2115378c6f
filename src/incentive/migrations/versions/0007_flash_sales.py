"""flash_sales

Revision ID: 0007_flash_sales
Revises: 0006_points_files
Create Date: 2026-11-23 04:36:28.677152
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0007_flash_sales"
down_revision = "0006_points_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flash_sales",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("item_name", sa.String(length=200), nullable=False),
        sa.Column("price_fen", sa.Integer(), nullable=False),
        sa.Column("total_stock", sa.Integer(), nullable=False),
        sa.Column("per_user_limit", sa.Integer(), nullable=False),
        sa.Column("buckets", sa.Integer(), nullable=False),
        sa.Column("starts_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("activated_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("split_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_flash_sales_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_flash_sales")),
    )
    op.create_table(
        "flash_sale_purchases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("flash_sale_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("takes", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flash_sale_id"],
            ["flash_sales.campaign_id"],
            name=op.f("fk_flash_sale_purchases_flash_sale_id_flash_sales"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_flash_sale_purchases_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flash_sale_purchases")),
        sa.UniqueConstraint(
            "flash_sale_id",
            "user_id",
            "idempotency_key",
            name=op.f("uq_flash_sale_purchases_flash_sale_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("flash_sale_purchases")
    op.drop_table("flash_sales")
