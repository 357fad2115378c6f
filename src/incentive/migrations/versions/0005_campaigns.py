"""campaigns: the shared campaign entity and its status history

Revision ID: 0005_campaigns
Revises: 0004_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0005_campaigns"
down_revision = "0004_events"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

STATUSES = (
    "'draft', 'pending_review', 'approved', 'rejected', 'active', 'paused', 'ended', 'cancelled'"
)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("owner_type", sa.String(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("starts_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("budget_account_id", BigId, nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_campaigns_ends_after_starts")),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_campaigns_status_known")),
        sa.CheckConstraint(
            "owner_type IN ('operator', 'merchant')", name=op.f("ck_campaigns_owner_type_known")
        ),
        sa.CheckConstraint(
            "owner_type <> 'merchant' OR merchant_id IS NOT NULL",
            name=op.f("ck_campaigns_merchant_owner_set"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_campaigns_version_positive")),
        sa.ForeignKeyConstraint(
            ["budget_account_id"],
            ["accounts.id"],
            name=op.f("fk_campaigns_budget_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_campaigns_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index("ix_campaigns_listing", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_campaigns_merchant_status", ["merchant_id", "status"], unique=False
        )
        batch_op.create_index("ix_campaigns_status_kind", ["status", "kind"], unique=False)

    op.create_table(
        "campaign_transitions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=32), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_transitions_campaign_id_campaigns"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_transitions")),
    )
    with op.batch_alter_table("campaign_transitions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_campaign_transitions_history", ["campaign_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("campaign_transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_campaign_transitions_history")
    op.drop_table("campaign_transitions")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_index("ix_campaigns_status_kind")
        batch_op.drop_index("ix_campaigns_merchant_status")
        batch_op.drop_index("ix_campaigns_listing")
    op.drop_table("campaigns")
