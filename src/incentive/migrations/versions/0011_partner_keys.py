"""partner API keys in their own table (rotation, revocation), partners can be disabled;
login failures leave the database

A partner had exactly one key in ``partners``; now it has any number in
``partner_api_keys``, each with its own expiry (a replaced key's grace period) and
revocation, and the partner a ``disabled_at``. Existing keys move over unchanged. Login
throttling counts in Redis or in process memory (``auth.throttle``), so ``login_failures``
is dropped.

Revision ID: 0011_partner_keys
Revises: 0010_points_file_attempts
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0011_partner_keys"
down_revision = "0010_points_file_attempts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner_api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_partner_api_keys_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_partner_api_keys_key_hash")),
    )
    with op.batch_alter_table("partner_api_keys") as batch:
        batch.create_index(batch.f("ix_partner_api_keys_partner_id"), ["partner_id"])
    # The partner's id doubles as its first key's id: unique, and no id generator in SQL.
    op.execute(
        "INSERT INTO partner_api_keys (id, partner_id, prefix, key_hash, created_at) "
        "SELECT id, id, api_key_prefix, api_key_hash, created_at FROM partners"
    )
    with op.batch_alter_table("partners") as batch:
        batch.drop_constraint("uq_partners_api_key_hash", type_="unique")
        batch.drop_column("api_key_prefix")
        batch.drop_column("api_key_hash")
        batch.add_column(
            sa.Column("disabled_at", incentive.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.drop_table("login_failures")


def downgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("window_start", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_failures")),
    )
    with op.batch_alter_table("partners") as batch:
        batch.add_column(sa.Column("api_key_prefix", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("api_key_hash", sa.String(length=128), nullable=True))
        batch.drop_column("disabled_at")
    # One key per partner again: the newest that is not revoked (else the newest at all).
    op.execute(
        "UPDATE partners SET "
        "api_key_prefix = (SELECT k.prefix FROM partner_api_keys k WHERE k.partner_id = "
        "partners.id ORDER BY k.revoked_at IS NULL DESC, k.created_at DESC LIMIT 1), "
        "api_key_hash = (SELECT k.key_hash FROM partner_api_keys k WHERE k.partner_id = "
        "partners.id ORDER BY k.revoked_at IS NULL DESC, k.created_at DESC LIMIT 1)"
    )
    with op.batch_alter_table("partners") as batch:
        batch.alter_column("api_key_prefix", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("api_key_hash", existing_type=sa.String(length=128), nullable=False)
        batch.create_unique_constraint("uq_partners_api_key_hash", ["api_key_hash"])
    with op.batch_alter_table("partner_api_keys") as batch:
        batch.drop_index(batch.f("ix_partner_api_keys_partner_id"))
    op.drop_table("partner_api_keys")
