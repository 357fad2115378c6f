"""Points-file tables: partner settings, files and their durable stages, records, batches.

- ``partner_points_settings``: per partner (keyed by ``partners.id``) the registered OpenPGP
  fingerprint, transport, limits and the ledger account the points are paid from.
- ``points_files``: one row per received file and the stage it has reached. Stage work is
  claimed by one worker at a time with a lease (``claimed_by``/``lease_until``); crediting is
  shared by many workers through ``points_batches``. ``accepted_seq``/``accepted_sha256`` are
  the duplicate guards: set while a file is accepted, cleared when it is rejected (a rejected
  file consumed nothing), unique per partner (NULLs never collide on either engine).
- ``points_records``: one row per ``D`` line, keyed by (file, line number).
- ``points_batches``: a claimed range of line numbers of one file; ``done`` exactly once.
- ``points_credited_records``: (partner, record id) of every credited record, unique forever;
  inserted in the transaction that credits the record.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, new_id, utcnow

FILE_STATES = (
    "received",
    "decrypted",
    "staged",
    "validated",
    "crediting",
    "credited",
    "feedback_written",
    "delivered",
    "rejected",
    "exception_written",
)
RECORD_STATES = ("valid", "credited", "failed")
DEFAULT_MAX_RECORDS = 2_000_000
# Default decrypted bytes allowed per record: a D line is about 100 bytes; this leaves room
# for long memos and still stops a compression bomb near the size a real file could have.
PLAIN_BYTES_PER_RECORD = 256


def max_plain_bytes_of(max_records: int, max_plain_bytes: int | None) -> int:
    """The decrypted size allowed for a partner's files (header and trailer included)."""
    if max_plain_bytes is not None:
        return max_plain_bytes
    return (max_records + 2) * PLAIN_BYTES_PER_RECORD


BATCH_STATES = ("claimed", "done")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class PartnerPointsSettings(Base):
    __tablename__ = "partner_points_settings"
    __table_args__ = (
        CheckConstraint("max_points_per_record > 0", name="max_points_positive"),
        CheckConstraint("max_file_bytes > 0", name="max_file_bytes_positive"),
        CheckConstraint("stale_after_days > 0", name="stale_after_days_positive"),
        CheckConstraint("max_records > 0", name="max_records_positive"),
        CheckConstraint("max_plain_bytes > 0", name="max_plain_bytes_positive"),
    )

    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), primary_key=True)
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    inbox_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    outbox_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    transport_key_file: Mapped[str | None] = mapped_column(String(500), nullable=True)
    known_hosts_file: Mapped[str | None] = mapped_column(String(500), nullable=True)
    crediting_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    max_points_per_record: Mapped[int] = mapped_column(BigInteger, default=1_000_000)
    max_file_bytes: Mapped[int] = mapped_column(BigInteger, default=512 * 1024 * 1024)
    max_records: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_MAX_RECORDS)
    # The decrypted size allowed (a compression bomb is stopped there); None: derived from
    # ``max_records`` (see ``max_plain_bytes_of``).
    max_plain_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    stale_after_days: Mapped[int] = mapped_column(Integer, default=90)
    funding_account_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("accounts.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PointsFile(Base):
    __tablename__ = "points_files"
    __table_args__ = (
        UniqueConstraint("partner_id", "accepted_seq", name="uq_points_files_partner_seq"),
        UniqueConstraint("partner_id", "accepted_sha256", name="uq_points_files_partner_sha"),
        CheckConstraint(_in("state", FILE_STATES), name="state_known"),
        Index("ix_points_files_state_lease", "state", "lease_until"),
        Index("ix_points_files_partner_received", "partner_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    name: Mapped[str] = mapped_column(String(255))
    base: Mapped[str] = mapped_column(String(255))
    file_seq: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    accepted_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    accepted_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(24))
    reason_code: Mapped[str | None] = mapped_column(String(24), nullable=True)
    reason_detail: Mapped[str] = mapped_column(Text, default="")
    record_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # The trailer's sum; None when it does not fit in 64 bits (its records are INVALID_POINTS).
    points_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=0)
    last_line: Mapped[int] = mapped_column(Integer, default=0)
    next_line: Mapped[int] = mapped_column(Integer, default=0)
    ok_count: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    points_credited: Mapped[int] = mapped_column(BigInteger, default=0)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    answer_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivery_error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Inbox files: set once the file is out of the partner's inbox. A stored file still
    # unset is our own leftover (a crash between storing and removing), not a resend.
    inbox_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    staged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    crediting_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    credited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Failed attempts at the file's current stage (reset when it moves on) and the last
    # error; at ``settings.points_stage_attempts`` the file is ended with an answer.
    stage_attempts: Mapped[int] = mapped_column(Integer, default=0)
    stage_error: Mapped[str] = mapped_column(Text, default="")


class PointsRecord(Base):
    __tablename__ = "points_records"
    __table_args__ = (
        CheckConstraint(_in("state", RECORD_STATES), name="state_known"),
        CheckConstraint("points > 0", name="points_positive"),
        Index("ix_points_records_file_record", "file_id", "record_id"),
    )

    # No foreign key: a million-row COPY would pay a trigger per row; records are deleted
    # with their file by the pipeline only.
    file_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[str] = mapped_column(Text)
    # None when the partner's value does not fit in 64 bits; its digits are in points_text.
    points: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    points_text: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    txn_time: Mapped[datetime] = mapped_column(UTCDateTime)
    memo: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(24), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


# The Core table, for the bulk paths (COPY or executemany when staging, loading a batch's
# records), which skip the ORM's per-row work.
RECORDS = cast(Table, PointsRecord.__table__)


class PointsBatch(Base):
    __tablename__ = "points_batches"
    __table_args__ = (
        UniqueConstraint("file_id", "first_line", name="uq_points_batches_file_first_line"),
        CheckConstraint(_in("state", BATCH_STATES), name="state_known"),
        CheckConstraint("last_line >= first_line", name="range_ordered"),
        Index("ix_points_batches_state_lease", "state", "lease_until"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("points_files.id", ondelete="CASCADE"))
    first_line: Mapped[int] = mapped_column(Integer)
    last_line: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    done_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ok_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    points_credited: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PointsCreditedRecord(Base):
    __tablename__ = "points_credited_records"

    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(32))
    line_no: Mapped[int] = mapped_column(Integer)
    credited_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


__all__ = [
    "FILE_STATES",
    "PartnerPointsSettings",
    "PointsBatch",
    "PointsCreditedRecord",
    "PointsFile",
    "PointsRecord",
    "RECORDS",
    "max_plain_bytes_of",
]


# The columns a staged record is written with (the reader's COPY and the set-based INSERT … SELECT).
RECORD_COLUMNS = (
    "file_id",
    "line_no",
    "record_id",
    "member_id",
    "points",
    "points_text",
    "txn_time",
    "memo",
    "user_id",
    "state",
    "reason",
    "detail",
)
