"""referrals: invites, referrals (accepted or rejected with a reason), counters of the caps,
identity signals (peppered hashes)

Revision ID: 0018_referrals
Revises: 0017_review
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0018_referrals"
down_revision = "0017_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "referral_invites",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("referrer_id", sa.String(length=32), nullable=False),
        sa.Column("referrer_role", sa.String(length=16), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_referral_invites_campaign_id_campaigns"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_invites")),
        sa.UniqueConstraint("token", name=op.f("uq_referral_invites_token")),
    )
    with op.batch_alter_table("referral_invites", schema=None) as batch_op:
        batch_op.create_index(
            "ix_referral_invites_referrer_created",
            ["referrer_id", "created_at", "id"],
            unique=False,
        )

    op.create_table(
        "referrals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("invite_id", sa.String(length=32), nullable=False),
        sa.Column("referrer_id", sa.String(length=32), nullable=False),
        sa.Column("referee_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("address_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("business_due_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_by", sa.String(length=40), nullable=True),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_referrals_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["invite_id"],
            ["referral_invites.id"],
            name=op.f("fk_referrals_invite_id_referral_invites"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
    )
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.create_index(
            "uq_referrals_invite_referee", ["invite_id", "referee_id"], unique=True
        )
        batch_op.create_index(
            "uq_referrals_campaign_referee",
            ["campaign_id", "referee_id"],
            unique=True,
            postgresql_where=sa.text("state <> 'rejected'"),
            sqlite_where=sa.text("state <> 'rejected'"),
        )
        batch_op.create_index(
            "ix_referrals_referrer_created", ["referrer_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "referral_counts",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_referral_counts_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint(
            "campaign_id", "subject", "period", name=op.f("pk_referral_counts")
        ),
    )
    op.create_table(
        "referral_signals",
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("seen_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "kind", "hash", name=op.f("pk_referral_signals")),
    )
    with op.batch_alter_table("referral_signals", schema=None) as batch_op:
        batch_op.create_index("ix_referral_signals_hash", ["kind", "hash"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("referral_signals", schema=None) as batch_op:
        batch_op.drop_index("ix_referral_signals_hash")
    op.drop_table("referral_signals")
    op.drop_table("referral_counts")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index("ix_referrals_referrer_created")
        batch_op.drop_index(
            "uq_referrals_campaign_referee",
            postgresql_where=sa.text("state <> 'rejected'"),
            sqlite_where=sa.text("state <> 'rejected'"),
        )
        batch_op.drop_index("uq_referrals_invite_referee")
    op.drop_table("referrals")
    with op.batch_alter_table("referral_invites", schema=None) as batch_op:
        batch_op.drop_index("ix_referral_invites_referrer_created")
    op.drop_table("referral_invites")
