"""rewards: the live chain of each reward campaign, grants with the chain walked, holdings

Revision ID: 0015_rewards
Revises: 0014_coupons
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0015_rewards"
down_revision = "0014_coupons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reward_participants",
        sa.Column("participant_group", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("granted", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "participant_group", "customer_id", name=op.f("pk_reward_participants")
        ),
    )
    op.create_table(
        "reward_grants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("trigger_key", sa.String(length=220), nullable=False),
        sa.Column("user_type", sa.String(length=16), nullable=False),
        sa.Column("reward_code", sa.String(length=64), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=True),
        sa.Column("delivery", sa.String(length=16), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("delivery_ref", sa.String(length=64), nullable=True),
        sa.Column("takes", sa.JSON(), nullable=False),
        sa.Column("chain", sa.JSON(), nullable=False),
        sa.Column("fallbacks", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_reward_grants_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reward_grants")),
        sa.UniqueConstraint(
            "campaign_id", "customer_id", "trigger_key", name=op.f("uq_reward_grants_campaign_id")
        ),
    )
    with op.batch_alter_table("reward_grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reward_grants_campaign_id_reward_code", ["campaign_id", "reward_code"], unique=False
        )
        batch_op.create_index(
            "ix_reward_grants_customer_id_created_at", ["customer_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_reward_grants_delivery_ref", ["delivery_ref"], unique=False)

    op.create_table(
        "reward_holdings",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("granted", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_reward_holdings_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "customer_id", name=op.f("pk_reward_holdings")),
    )
    op.create_table(
        "reward_items",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("delivery", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("per_user_limit", sa.BigInteger(), nullable=True),
        sa.Column("batch_id", sa.String(length=32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("stock_total", sa.BigInteger(), nullable=False),
        sa.Column("low_stock_threshold", sa.BigInteger(), nullable=True),
        sa.Column("low_since", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("buckets", sa.Integer(), nullable=False),
        sa.Column("retired_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_reward_items_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "code", name=op.f("pk_reward_items")),
    )


def downgrade() -> None:
    op.drop_table("reward_items")
    op.drop_table("reward_holdings")
    with op.batch_alter_table("reward_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_reward_grants_delivery_ref")
        batch_op.drop_index("ix_reward_grants_customer_id_created_at")
        batch_op.drop_index("ix_reward_grants_campaign_id_reward_code")

    op.drop_table("reward_grants")
    op.drop_table("reward_participants")
