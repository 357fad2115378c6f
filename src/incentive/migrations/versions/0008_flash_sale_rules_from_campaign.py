"""flash sales read what was approved from the campaign: drop the copied rules and window

The ``flash_sales`` row kept its own copy of the rules and window, which an edit before
review never updated (the sale ran the old values). The campaign row is now the only copy;
``buckets`` is decided at the first activation (nullable until then).

Revision ID: 0008_flash_sale_rules
Revises: 0007_flash_sales
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0008_flash_sale_rules"
down_revision = "0007_flash_sales"
branch_labels = None
depends_on = None

COPIED = ("sku", "item_name", "price_fen", "total_stock", "per_user_limit", "starts_at", "ends_at")


def upgrade() -> None:
    with op.batch_alter_table("flash_sales") as batch:
        for column in COPIED:
            batch.drop_column(column)
        batch.alter_column("buckets", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("flash_sales") as batch:
        batch.add_column(sa.Column("sku", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("item_name", sa.String(length=200), nullable=True))
        for column in ("price_fen", "total_stock", "per_user_limit"):
            batch.add_column(sa.Column(column, sa.Integer(), nullable=True))
        for column in ("starts_at", "ends_at"):
            batch.add_column(sa.Column(column, incentive.db.UTCDateTime(timezone=True)))
    conn = op.get_bind()
    campaigns = sa.table(
        "campaigns",
        sa.column("id", sa.String),
        sa.column("rules", sa.JSON),
        sa.column("starts_at", incentive.db.UTCDateTime(timezone=True)),
        sa.column("ends_at", incentive.db.UTCDateTime(timezone=True)),
    )
    sales = sa.table(
        "flash_sales",
        sa.column("campaign_id", sa.String),
        sa.column("buckets", sa.Integer),
        *(sa.column(c) for c in COPIED),
    )
    rows = conn.execute(
        sa.select(campaigns).where(campaigns.c.id.in_(sa.select(sales.c.campaign_id)))
    ).all()
    for row in rows:
        rules = row.rules
        conn.execute(
            sales.update()
            .where(sales.c.campaign_id == row.id)
            .values(
                sku=rules["sku"],
                item_name=rules["item_name"],
                price_fen=rules["price_fen"],
                total_stock=rules["total_stock"],
                per_user_limit=rules["per_user_limit"],
                starts_at=row.starts_at,
                ends_at=row.ends_at,
                buckets=sa.func.coalesce(sales.c.buckets, rules.get("buckets") or 1),
            )
        )
    with op.batch_alter_table("flash_sales") as batch:
        for column in (*COPIED, "buckets"):
            batch.alter_column(column, nullable=False)
