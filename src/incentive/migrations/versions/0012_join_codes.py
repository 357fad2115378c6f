"""join codes: single-use codes generated for a campaign, and the merchants that joined it

``audit_log.action`` grows to 200 characters: the audit entry of an idempotent call is
``METHOD /path``, and ``POST /api/v1/campaigns/{id}/join-codes`` is 67.

Revision ID: 0012_join_codes
Revises: 0011_partner_keys
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0012_join_codes"
down_revision = "0011_partner_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column(
            "action",
            existing_type=sa.String(length=64),
            type_=sa.String(length=200),
            existing_nullable=False,
        )
    op.create_table(
        "join_codes",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("redeemed_by_merchant_id", sa.String(length=32), nullable=True),
        sa.Column("redeemed_by_user_id", sa.String(length=32), nullable=True),
        sa.Column("redeemed_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("voided_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("voided_by", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "status IN ('unused', 'used', 'void')", name=op.f("ck_join_codes_status_known")
        ),
        sa.CheckConstraint(
            "status <> 'used' OR (redeemed_by_merchant_id IS NOT NULL AND redeemed_at IS NOT NULL)",
            name=op.f("ck_join_codes_used_has_redeemer"),
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_join_codes")),
    )
    op.create_index("ix_join_codes_campaign_code", "join_codes", ["campaign_id", "code"])
    op.create_index(
        "ix_join_codes_campaign_spent",
        "join_codes",
        ["campaign_id", "status", "code"],
        postgresql_where=sa.text("status <> 'unused'"),
        sqlite_where=sa.text("status <> 'unused'"),
    )
    op.create_table(
        "campaign_merchants",
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("joined_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("joined_by", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_merchants_campaign_id_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_campaign_merchants_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["code"], ["join_codes.code"], name=op.f("fk_campaign_merchants_code_join_codes")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "merchant_id", name=op.f("pk_campaign_merchants")),
        sa.UniqueConstraint("code", name=op.f("uq_campaign_merchants_code")),
    )
    op.create_index(
        "ix_campaign_merchants_joined",
        "campaign_merchants",
        ["campaign_id", "joined_at", "merchant_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_campaign_merchants_joined", table_name="campaign_merchants")
    op.drop_table("campaign_merchants")
    op.drop_index("ix_join_codes_campaign_spent", table_name="join_codes")
    op.drop_index("ix_join_codes_campaign_code", table_name="join_codes")
    op.drop_table("join_codes")
    # Entries longer than the old width are cut, not lost.
    op.execute("UPDATE audit_log SET action = substr(action, 1, 64) WHERE length(action) > 64")
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column(
            "action",
            existing_type=sa.String(length=200),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
