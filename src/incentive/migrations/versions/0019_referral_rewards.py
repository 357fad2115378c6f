"""referrals part 2: completion columns of referrals (business amount, refunds, release time)
and the rewards of completed referrals (one row per payee)

Revision ID: 0019_referral_rewards
Revises: 0018_referrals
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0019_referral_rewards"
down_revision = "0018_referrals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("business_amount_fen", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("refunded_fen", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("release_at", incentive.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_referrals_state_release", ["state", "release_at"], unique=False)
        batch_op.create_index(
            "ix_referrals_campaign_created", ["campaign_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "referral_rewards",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("referral_id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("beneficiary_id", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=16), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("coupon_batch_id", sa.String(length=32), nullable=True),
        sa.Column("coupon_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_referral_rewards_campaign_id_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_rewards_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_rewards")),
    )
    with op.batch_alter_table("referral_rewards", schema=None) as batch_op:
        batch_op.create_index(
            "uq_referral_rewards_payee", ["referral_id", "side", "level"], unique=True
        )
        batch_op.create_index(
            "ix_referral_rewards_beneficiary",
            ["beneficiary_id", "created_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_referral_rewards_campaign", ["campaign_id", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("referral_rewards", schema=None) as batch_op:
        batch_op.drop_index("ix_referral_rewards_campaign")
        batch_op.drop_index("ix_referral_rewards_beneficiary")
        batch_op.drop_index("uq_referral_rewards_payee")
    op.drop_table("referral_rewards")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index("ix_referrals_campaign_created")
        batch_op.drop_index("ix_referrals_state_release")
        batch_op.drop_column("release_at")
        batch_op.drop_column("refunded_fen")
        batch_op.drop_column("business_amount_fen")
