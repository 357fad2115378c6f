"""points_files: partner points settings, files, records, batches, credited record ids

Revision ID: 0006_points_files
Revises: 0005_campaigns
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0006_points_files"
down_revision = "0005_campaigns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "points_records",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("txn_time", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "state IN ('valid', 'credited', 'failed')", name=op.f("ck_points_records_state_known")
        ),
        sa.CheckConstraint("points > 0", name=op.f("ck_points_records_points_positive")),
        sa.PrimaryKeyConstraint("file_id", "line_no", name=op.f("pk_points_records")),
    )
    with op.batch_alter_table("points_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_points_records_file_record", ["file_id", "record_id"], unique=False
        )

    op.create_table(
        "partner_points_settings",
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("inbox_url", sa.String(length=500), nullable=True),
        sa.Column("outbox_url", sa.String(length=500), nullable=True),
        sa.Column("transport_key_file", sa.String(length=500), nullable=True),
        sa.Column("known_hosts_file", sa.String(length=500), nullable=True),
        sa.Column("crediting_url", sa.String(length=500), nullable=True),
        sa.Column("max_points_per_record", sa.BigInteger(), nullable=False),
        sa.Column("max_file_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stale_after_days", sa.Integer(), nullable=False),
        sa.Column(
            "funding_account_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "max_file_bytes > 0", name=op.f("ck_partner_points_settings_max_file_bytes_positive")
        ),
        sa.CheckConstraint(
            "max_points_per_record > 0", name=op.f("ck_partner_points_settings_max_points_positive")
        ),
        sa.CheckConstraint(
            "stale_after_days > 0",
            name=op.f("ck_partner_points_settings_stale_after_days_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["funding_account_id"],
            ["accounts.id"],
            name=op.f("fk_partner_points_settings_funding_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.id"],
            name=op.f("fk_partner_points_settings_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("partner_id", name=op.f("pk_partner_points_settings")),
    )
    op.create_table(
        "points_credited_records",
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("credited_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.id"],
            name=op.f("fk_points_credited_records_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("partner_id", "record_id", name=op.f("pk_points_credited_records")),
    )
    op.create_table(
        "points_files",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("base", sa.String(length=255), nullable=False),
        sa.Column("file_seq", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("accepted_seq", sa.BigInteger(), nullable=True),
        sa.Column("accepted_sha256", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("reason_code", sa.String(length=24), nullable=True),
        sa.Column("reason_detail", sa.Text(), nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("points_total", sa.BigInteger(), nullable=False),
        sa.Column("last_line", sa.Integer(), nullable=False),
        sa.Column("next_line", sa.Integer(), nullable=False),
        sa.Column("ok_count", sa.BigInteger(), nullable=False),
        sa.Column("failed_count", sa.BigInteger(), nullable=False),
        sa.Column("points_credited", sa.BigInteger(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("answer_name", sa.String(length=255), nullable=True),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_error", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("inbox_removed_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("staged_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("crediting_started_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("credited_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("answered_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('received', 'decrypted', 'staged', 'validated', 'crediting', 'credited', "
            "'feedback_written', 'delivered', 'rejected', 'exception_written')",
            name=op.f("ck_points_files_state_known"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_points_files_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_points_files")),
        sa.UniqueConstraint("partner_id", "accepted_seq", name="uq_points_files_partner_seq"),
        sa.UniqueConstraint("partner_id", "accepted_sha256", name="uq_points_files_partner_sha"),
    )
    with op.batch_alter_table("points_files", schema=None) as batch_op:
        batch_op.create_index(
            "ix_points_files_partner_received", ["partner_id", "received_at"], unique=False
        )
        batch_op.create_index("ix_points_files_state_lease", ["state", "lease_until"], unique=False)

    op.create_table(
        "points_batches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("first_line", sa.Integer(), nullable=False),
        sa.Column("last_line", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("done_by", sa.String(length=64), nullable=True),
        sa.Column("ok_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("points_credited", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("done_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('claimed', 'done')", name=op.f("ck_points_batches_state_known")
        ),
        sa.CheckConstraint("last_line >= first_line", name=op.f("ck_points_batches_range_ordered")),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["points_files.id"],
            name=op.f("fk_points_batches_file_id_points_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_points_batches")),
        sa.UniqueConstraint("file_id", "first_line", name="uq_points_batches_file_first_line"),
    )
    with op.batch_alter_table("points_batches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_points_batches_state_lease", ["state", "lease_until"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("points_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_points_batches_state_lease")

    op.drop_table("points_batches")
    with op.batch_alter_table("points_files", schema=None) as batch_op:
        batch_op.drop_index("ix_points_files_state_lease")
        batch_op.drop_index("ix_points_files_partner_received")

    op.drop_table("points_files")
    op.drop_table("points_credited_records")
    op.drop_table("partner_points_settings")
    with op.batch_alter_table("points_records", schema=None) as batch_op:
        batch_op.drop_index("ix_points_records_file_record")

    op.drop_table("points_records")
