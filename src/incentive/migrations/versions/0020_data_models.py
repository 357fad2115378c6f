"""data models: the registry (models and their versions), the archive, targets, the
delivery ledger and backfill positions

Revision ID: 0020_data_models
Revises: 0019_referral_rewards
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0020_data_models"
down_revision = "0019_referral_rewards"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_models",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("partners", sa.JSON(), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_models")),
    )
    op.create_table(
        "data_model_versions",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["data_models.id"],
            name=op.f("fk_data_model_versions_model_id_data_models"),
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name=op.f("pk_data_model_versions")),
    )
    op.create_table(
        "data_model_archive",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("record_key", sa.String(length=128), nullable=False),
        sa.Column("campaign_id", sa.String(length=32), nullable=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("archived_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["data_models.id"],
            name=op.f("fk_data_model_archive_model_id_data_models"),
        ),
        sa.PrimaryKeyConstraint(
            "model_id", "version", "record_key", name=op.f("pk_data_model_archive")
        ),
    )
    with op.batch_alter_table("data_model_archive", schema=None) as batch_op:
        batch_op.create_index(
            "ix_data_model_archive_model_archived",
            ["model_id", "archived_at", "record_key"],
            unique=False,
        )

    op.create_table(
        "data_model_targets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["data_models.id"],
            name=op.f("fk_data_model_targets_model_id_data_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_model_targets")),
    )
    with op.batch_alter_table("data_model_targets", schema=None) as batch_op:
        batch_op.create_index("uq_data_model_targets_name", ["model_id", "name"], unique=True)
    op.create_table(
        "data_model_deliveries",
        sa.Column("target_id", sa.String(length=32), nullable=False),
        sa.Column("record_key", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("delivered_hash", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["data_model_targets.id"],
            name=op.f("fk_data_model_deliveries_target_id_data_model_targets"),
        ),
        sa.PrimaryKeyConstraint("target_id", "record_key", name=op.f("pk_data_model_deliveries")),
    )
    with op.batch_alter_table("data_model_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_data_model_deliveries_due", ["state", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            "ix_data_model_deliveries_model_state",
            ["model_id", "state", "record_key"],
            unique=False,
        )
    op.create_table(
        "data_model_positions",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.String(length=500), nullable=True),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["data_models.id"],
            name=op.f("fk_data_model_positions_model_id_data_models"),
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_data_model_positions")),
    )
    op.create_table(
        "data_model_failures",
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("record_key", sa.String(length=128), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("failed_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["data_models.id"],
            name=op.f("fk_data_model_failures_model_id_data_models"),
        ),
        sa.PrimaryKeyConstraint(
            "model_id", "version", "record_key", name=op.f("pk_data_model_failures")
        ),
    )


def downgrade() -> None:
    op.drop_table("data_model_failures")
    op.drop_table("data_model_positions")
    with op.batch_alter_table("data_model_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_data_model_deliveries_model_state")
        batch_op.drop_index("ix_data_model_deliveries_due")
    op.drop_table("data_model_deliveries")
    with op.batch_alter_table("data_model_targets", schema=None) as batch_op:
        batch_op.drop_index("uq_data_model_targets_name")
    op.drop_table("data_model_targets")
    with op.batch_alter_table("data_model_archive", schema=None) as batch_op:
        batch_op.drop_index("ix_data_model_archive_model_archived")
    op.drop_table("data_model_archive")
    op.drop_table("data_model_versions")
    op.drop_table("data_models")
