"""activities and their outcomes per campaign; rebate payouts and cap totals

Revision ID: 0013_activities
Revises: 0012_join_codes
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0013_activities"
down_revision = "0012_join_codes"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = incentive.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "activities",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("sender", sa.String(length=80), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", TIME, nullable=False),
        sa.Column("customer", sa.String(length=64), nullable=False),
        sa.Column("merchant", sa.String(length=64), nullable=True),
        sa.Column("staff", sa.String(length=64), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("refers_to", BIG_ID, nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("evaluated_at", TIME, nullable=True),
        sa.CheckConstraint(
            "type IN ('payment', 'refund', 'task_completed', 'signup', 'custom')",
            name=op.f("ck_activities_type_known"),
        ),
        sa.CheckConstraint(
            "state IN ('received', 'evaluated')", name=op.f("ck_activities_state_known")
        ),
        sa.ForeignKeyConstraint(
            ["refers_to"], ["activities.id"], name=op.f("fk_activities_refers_to_activities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activities")),
        sa.UniqueConstraint("sender", "external_id", name="uq_activities_sender_id"),
    )
    with op.batch_alter_table("activities") as batch:
        batch.create_index("ix_activities_customer", ["customer", "id"])
        batch.create_index("ix_activities_received", ["state", "id"])
    op.create_table(
        "activity_outcomes",
        sa.Column("activity_id", BIG_ID, nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("decided_at", TIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('rewarded', 'reversed', 'refused')",
            name=op.f("ck_activity_outcomes_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_activity_outcomes_activity_id_activities"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_activity_outcomes_campaign_id_campaigns"),
        ),
        sa.PrimaryKeyConstraint("activity_id", "campaign_id", name=op.f("pk_activity_outcomes")),
    )
    with op.batch_alter_table("activity_outcomes") as batch:
        batch.create_index("ix_activity_outcomes_campaign", ["campaign_id", "status", "reason"])
    op.create_table(
        "rebate_payouts",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("activity_id", BIG_ID, nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("customer", sa.String(length=64), nullable=False),
        sa.Column("merchant", sa.String(length=64), nullable=False),
        sa.Column("staff", sa.String(length=64), nullable=True),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "payment_fen",
                "user_fen",
                "merchant_fen",
                "staff_fen",
                "refunded_fen",
                "reversed_user_fen",
                "reversed_merchant_fen",
                "reversed_staff_fen",
                "shortfall_fen",
            )
        ),
        sa.Column("paid_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_rebate_payouts_activity_id_activities"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_rebate_payouts_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "activity_id", name=op.f("pk_rebate_payouts")),
    )
    with op.batch_alter_table("rebate_payouts") as batch:
        batch.create_index("ix_rebate_payouts_merchant", ["campaign_id", "merchant", "activity_id"])
        batch.create_index("ix_rebate_payouts_customer", ["customer", "activity_id"])
    op.create_table(
        "rebate_totals",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("party", sa.String(length=16), nullable=False),
        sa.Column("party_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("paid_fen", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_rebate_totals_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint(
            "campaign_id", "party", "party_id", "day", name=op.f("pk_rebate_totals")
        ),
    )


def downgrade() -> None:
    op.drop_table("rebate_totals")
    op.drop_table("rebate_payouts")
    op.drop_table("activity_outcomes")
    op.drop_table("activities")
