"""templates and review: campaign templates (versioned), campaigns made from them, the
sensitive-word lists (versioned) and the review verdicts

Revision ID: 0017_review
Revises: 0016_sharing
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import incentive.db

revision = "0017_review"
down_revision = "0016_sharing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_templates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", incentive.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('draft', 'published', 'retired')",
            name=op.f("ck_campaign_templates_template_status_known"),
        ),
        sa.CheckConstraint(
            "version >= 1", name=op.f("ck_campaign_templates_template_version_positive")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_templates")),
        sa.UniqueConstraint("key", "version", name="uq_campaign_templates_key_version"),
    )
    with op.batch_alter_table("campaign_templates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_campaign_templates_listing", ["status", "key", "version"], unique=False
        )

    op.create_table(
        "review_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_revision")),
    )
    op.create_table(
        "word_lists",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("word_count", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "severity IN ('reject', 'hold')", name=op.f("ck_word_lists_word_list_severity_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_word_lists")),
        sa.UniqueConstraint("name", name=op.f("uq_word_lists_name")),
    )
    op.create_table(
        "sensitive_words",
        sa.Column("list_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("word", sa.String(length=100), nullable=False),
        sa.Column("added_in", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["word_lists.id"],
            name=op.f("fk_sensitive_words_list_id_word_lists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("list_id", "word", name=op.f("pk_sensitive_words")),
    )
    op.create_table(
        "word_list_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("list_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("words", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=32), nullable=False),
        sa.Column("at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["word_lists.id"],
            name=op.f("fk_word_list_changes_list_id_word_lists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_word_list_changes")),
    )
    with op.batch_alter_table("word_list_changes", schema=None) as batch_op:
        batch_op.create_index("ix_word_list_changes_list", ["list_id", "version"], unique=False)

    op.create_table(
        "review_verdicts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("campaign_id", sa.String(length=32), nullable=False),
        sa.Column("campaign_version", sa.BigInteger(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("automated", sa.Boolean(), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("decided_by", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("hits", sa.JSON(), nullable=False),
        sa.Column("hit_count", sa.BigInteger(), nullable=False),
        sa.Column("lists", sa.JSON(), nullable=False),
        sa.Column("at", incentive.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "verdict IN ('approved', 'rejected', 'held')",
            name=op.f("ck_review_verdicts_review_verdict_known"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_review_verdicts_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_verdicts")),
    )
    with op.batch_alter_table("review_verdicts", schema=None) as batch_op:
        batch_op.create_index("ix_review_verdicts_campaign", ["campaign_id", "id"], unique=False)
        batch_op.create_index("ix_review_verdicts_queue", ["open", "id"], unique=False)

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("template_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("template_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("content", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("content")
        batch_op.drop_column("template_version")
        batch_op.drop_column("template_key")

    with op.batch_alter_table("review_verdicts", schema=None) as batch_op:
        batch_op.drop_index("ix_review_verdicts_queue")
        batch_op.drop_index("ix_review_verdicts_campaign")

    op.drop_table("review_verdicts")
    with op.batch_alter_table("word_list_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_word_list_changes_list")

    op.drop_table("word_list_changes")
    op.drop_table("sensitive_words")
    op.drop_table("word_lists")
    op.drop_table("review_revision")
    with op.batch_alter_table("campaign_templates", schema=None) as batch_op:
        batch_op.drop_index("ix_campaign_templates_listing")

    op.drop_table("campaign_templates")
