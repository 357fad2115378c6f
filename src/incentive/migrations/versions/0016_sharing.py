"""sharing: settings per campaign, shares, visits (per visitor and day), last-visited shares,
conversions, per-sharer counters

Revision ID: 0016_sharing
Revises: 0015_rewards
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0016_sharing"
down_revision = "0015_rewards"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "share_sharers",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("sharer_id", sa.String(length=32), nullable=False),
        sa.Column("sharer_role", sa.String(length=16), nullable=False),
        sa.Column("shares", sa.BigInteger(), nullable=False),
        sa.Column("coupons", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_share_sharers_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "sharer_id", name=op.f("pk_share_sharers")),
    )
    op.create_table(
        "shares",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("sharer_id", sa.String(length=32), nullable=False),
        sa.Column("sharer_role", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("coupon_id", sa.String(length=32), nullable=True),
        sa.Column("coupon_refusal", sa.String(length=40), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_shares_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
        sa.UniqueConstraint("token", name=op.f("uq_shares_token")),
    )
    with op.batch_alter_table("shares", schema=None) as batch_op:
        batch_op.create_index(
            "ix_shares_campaign_channel", ["campaign_id", "channel"], unique=False
        )
        batch_op.create_index(
            "ix_shares_sharer_created", ["sharer_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "sharing_settings",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("coupon_batch_id", sa.String(length=32), nullable=True),
        sa.Column("coupons_per_sharer", sa.BigInteger(), nullable=False),
        sa.Column("attribution_hours", sa.BigInteger(), nullable=False),
        sa.Column("conversion_types", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(length=32), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_sharing_settings_campaign_id_campaigns"),
        ),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_sharing_settings")),
    )
    op.create_table(
        "share_conversions",
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=40), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("share_id", sa.String(length=32), nullable=False),
        sa.Column("sharer_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("via", sa.String(length=8), nullable=False),
        sa.Column("occurred_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_share_conversions_campaign_id_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["share_id"], ["shares.id"], name=op.f("fk_share_conversions_share_id_shares")
        ),
        sa.PrimaryKeyConstraint("source", "ref", "campaign_id", name=op.f("pk_share_conversions")),
    )
    with op.batch_alter_table("share_conversions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_share_conversions_campaign_sharer", ["campaign_id", "sharer_id"], unique=False
        )

    op.create_table(
        "share_touches",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("share_id", sa.String(length=32), nullable=False),
        sa.Column("visited_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_share_touches_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["share_id"], ["shares.id"], name=op.f("fk_share_touches_share_id_shares")
        ),
        sa.PrimaryKeyConstraint("customer_id", "campaign_id", name=op.f("pk_share_touches")),
    )
    op.create_table(
        "share_visits",
        sa.Column("share_id", sa.String(length=32), nullable=False),
        sa.Column("visitor", sa.String(length=80), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("sharer_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=True),
        sa.Column("visited_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["share_id"], ["shares.id"], name=op.f("fk_share_visits_share_id_shares")
        ),
        sa.PrimaryKeyConstraint("share_id", "visitor", "day", name=op.f("pk_share_visits")),
    )
    with op.batch_alter_table("share_visits", schema=None) as batch_op:
        batch_op.create_index(
            "ix_share_visits_campaign_visitor", ["campaign_id", "visitor"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("share_visits", schema=None) as batch_op:
        batch_op.drop_index("ix_share_visits_campaign_visitor")

    op.drop_table("share_visits")
    op.drop_table("share_touches")
    with op.batch_alter_table("share_conversions", schema=None) as batch_op:
        batch_op.drop_index("ix_share_conversions_campaign_sharer")

    op.drop_table("share_conversions")
    op.drop_table("sharing_settings")
    with op.batch_alter_table("shares", schema=None) as batch_op:
        batch_op.drop_index("ix_shares_sharer_created")
        batch_op.drop_index("ix_shares_campaign_channel")

    op.drop_table("shares")
    op.drop_table("share_sharers")
