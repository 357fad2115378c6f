"""coupons: providers, batches, wallets with every transition, redemptions, provider calls

Revision ID: 0014_coupons
Revises: 0013_activities
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0014_coupons"
down_revision = "0013_activities"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coupon_providers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("credentials", sa.String(length=500), nullable=False),
        sa.Column("webhook_secret", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("synced_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sync_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('active', 'disabled')", name=op.f("ck_coupon_providers_state_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_providers")),
        sa.UniqueConstraint("code", name=op.f("uq_coupon_providers_code")),
    )
    op.create_table(
        "coupon_batches",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=True),
        sa.Column("provider_id", sa.String(length=32), nullable=True),
        sa.Column("external_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("codes_imported", sa.Boolean(), nullable=False),
        sa.Column("provider_state", sa.String(length=16), nullable=True),
        sa.Column("claims_until", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("stock", sa.BigInteger(), nullable=False),
        sa.Column("claimed", sa.BigInteger(), nullable=False),
        sa.Column("per_customer_limit", sa.BigInteger(), nullable=False),
        sa.Column("face_value_fen", sa.BigInteger(), nullable=True),
        sa.Column("rate_bp", sa.Integer(), nullable=True),
        sa.Column("max_discount_fen", sa.BigInteger(), nullable=True),
        sa.Column("min_spend_fen", sa.BigInteger(), nullable=False),
        sa.Column("valid_from", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("valid_until", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("valid_days", sa.Integer(), nullable=True),
        sa.Column("task", sa.JSON(), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("synced_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "provider_state IS NULL OR "
            "provider_state IN ('running', 'paused', 'stopped', 'exhausted')",
            name=op.f("ck_coupon_batches_provider_state_known"),
        ),
        sa.CheckConstraint(
            "(face_value_fen IS NULL) <> (rate_bp IS NULL)",
            name=op.f("ck_coupon_batches_face_value_or_rate"),
        ),
        sa.CheckConstraint("stock >= 0", name=op.f("ck_coupon_batches_stock_not_negative")),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_coupon_batches_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["coupon_providers.id"],
            name=op.f("fk_coupon_batches_provider_id_coupon_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_batches")),
        sa.UniqueConstraint("campaign_id", name=op.f("uq_coupon_batches_campaign_id")),
        sa.UniqueConstraint("provider_id", "external_id", name="uq_coupon_batches_provider_batch"),
    )
    op.create_table(
        "coupon_holdings",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("claimed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["coupon_batches.id"],
            name=op.f("fk_coupon_holdings_batch_id_coupon_batches"),
        ),
        sa.PrimaryKeyConstraint("batch_id", "customer_id", name=op.f("pk_coupon_holdings")),
    )
    op.create_table(
        "coupon_imported_codes",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("coupon_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["coupon_batches.id"],
            name=op.f("fk_coupon_imported_codes_batch_id_coupon_batches"),
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_coupon_imported_codes")),
    )
    with op.batch_alter_table("coupon_imported_codes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_coupon_imported_codes_free",
            ["batch_id", "code"],
            unique=False,
            postgresql_where=sa.text("coupon_id IS NULL"),
            sqlite_where=sa.text("coupon_id IS NULL"),
        )

    op.create_table(
        "coupons",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claimed_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("task_due_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("valid_from", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_until", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("face_value_fen", sa.BigInteger(), nullable=True),
        sa.Column("rate_bp", sa.Integer(), nullable=True),
        sa.Column("max_discount_fen", sa.BigInteger(), nullable=True),
        sa.Column("min_spend_fen", sa.BigInteger(), nullable=False),
        sa.Column("provider_id", sa.String(length=32), nullable=True),
        sa.Column("request_no", sa.String(length=48), nullable=True),
        sa.Column("provider_code", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("held_until", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("held_by", sa.String(length=32), nullable=True),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('received', 'activating', 'unknown', 'usable', 'held', "
            "'redeemed', 'expired', 'failed', 'revoked')",
            name=op.f("ck_coupons_state_known"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["coupon_batches.id"], name=op.f("fk_coupons_batch_id_coupon_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupons")),
        sa.UniqueConstraint("code", name=op.f("uq_coupons_code")),
        sa.UniqueConstraint("request_no", name=op.f("uq_coupons_request_no")),
    )
    with op.batch_alter_table("coupons", schema=None) as batch_op:
        batch_op.create_index("ix_coupons_batch_state", ["batch_id", "state"], unique=False)
        batch_op.create_index(
            "ix_coupons_campaign_customer", ["campaign_id", "customer_id", "state"], unique=False
        )
        batch_op.create_index("ix_coupons_expiry", ["state", "valid_until"], unique=False)
        batch_op.create_index(
            "ix_coupons_task_due",
            ["task_due_at"],
            unique=False,
            postgresql_where=sa.text("state = 'received'"),
            sqlite_where=sa.text("state = 'received'"),
        )
        batch_op.create_index(
            "ix_coupons_wallet", ["customer_id", "claimed_at", "id"], unique=False
        )

    op.create_table(
        "coupon_provider_calls",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider_id", sa.String(length=32), nullable=False),
        sa.Column("coupon_id", sa.String(length=32), nullable=False),
        sa.Column("redemption_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("request_no", sa.String(length=48), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("leased_until", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "action IN ('issue', 'redeem', 'reverse', 'revoke')",
            name=op.f("ck_coupon_provider_calls_action_known"),
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'in_flight', 'done', 'failed')",
            name=op.f("ck_coupon_provider_calls_state_known"),
        ),
        sa.ForeignKeyConstraint(
            ["coupon_id"], ["coupons.id"], name=op.f("fk_coupon_provider_calls_coupon_id_coupons")
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["coupon_providers.id"],
            name=op.f("fk_coupon_provider_calls_provider_id_coupon_providers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_provider_calls")),
        sa.UniqueConstraint("request_no", name=op.f("uq_coupon_provider_calls_request_no")),
    )
    with op.batch_alter_table("coupon_provider_calls", schema=None) as batch_op:
        batch_op.create_index("ix_coupon_provider_calls_coupon", ["coupon_id", "id"], unique=False)
        batch_op.create_index("ix_coupon_provider_calls_due", ["state", "due_at"], unique=False)

    op.create_table(
        "coupon_redemptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("coupon_id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("staff_id", sa.String(length=32), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("discount_fen", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("undone_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("undone_by", sa.String(length=32), nullable=True),
        sa.Column("provider_state", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["coupon_id"], ["coupons.id"], name=op.f("fk_coupon_redemptions_coupon_id_coupons")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_redemptions")),
    )
    with op.batch_alter_table("coupon_redemptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_coupon_redemptions_merchant", ["merchant_id", "redeemed_at", "id"], unique=False
        )
        batch_op.create_index(
            "uq_coupon_redemptions_standing",
            ["coupon_id"],
            unique=True,
            postgresql_where=sa.text("undone_at IS NULL"),
            sqlite_where=sa.text("undone_at IS NULL"),
        )

    op.create_table(
        "coupon_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("coupon_id", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["coupon_id"], ["coupons.id"], name=op.f("fk_coupon_transitions_coupon_id_coupons")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_transitions")),
    )
    with op.batch_alter_table("coupon_transitions", schema=None) as batch_op:
        batch_op.create_index("ix_coupon_transitions_coupon", ["coupon_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("coupon_transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_coupon_transitions_coupon")

    op.drop_table("coupon_transitions")
    with op.batch_alter_table("coupon_redemptions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_coupon_redemptions_standing",
            postgresql_where=sa.text("undone_at IS NULL"),
            sqlite_where=sa.text("undone_at IS NULL"),
        )
        batch_op.drop_index("ix_coupon_redemptions_merchant")

    op.drop_table("coupon_redemptions")
    with op.batch_alter_table("coupon_provider_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_coupon_provider_calls_due")
        batch_op.drop_index("ix_coupon_provider_calls_coupon")

    op.drop_table("coupon_provider_calls")
    with op.batch_alter_table("coupons", schema=None) as batch_op:
        batch_op.drop_index("ix_coupons_wallet")
        batch_op.drop_index(
            "ix_coupons_task_due",
            postgresql_where=sa.text("state = 'received'"),
            sqlite_where=sa.text("state = 'received'"),
        )
        batch_op.drop_index("ix_coupons_expiry")
        batch_op.drop_index("ix_coupons_campaign_customer")
        batch_op.drop_index("ix_coupons_batch_state")

    op.drop_table("coupons")
    with op.batch_alter_table("coupon_imported_codes", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_coupon_imported_codes_free",
            postgresql_where=sa.text("coupon_id IS NULL"),
            sqlite_where=sa.text("coupon_id IS NULL"),
        )

    op.drop_table("coupon_imported_codes")
    op.drop_table("coupon_holdings")
    op.drop_table("coupon_batches")
    op.drop_table("coupon_providers")
