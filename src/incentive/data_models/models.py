"""Data-model tables: the registry (a model and each of its versions, field by field) and the
archive (every assembled record's canonical JSON and hash, per model version — the durable
copy; the production deployment mirrors it in Redis)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, UTCDateTime, utcnow


class DataModel(Base):
    """A data model external systems ask for by ``id``; ``version`` is its current version."""

    __tablename__ = "data_models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(BigInteger)
    #: partner codes whose API keys may read this model's records (operators always may)
    partners: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DataModelVersion(Base):
    """One version of a model's definition; a change of fields makes the next version and
    no version ever changes, so a record archived under it can be assembled again."""

    __tablename__ = "data_model_versions"

    model_id: Mapped[str] = mapped_column(ForeignKey("data_models.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(40))
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArchivedRecord(Base):
    """An assembled record as canonical JSON with its SHA-256, by (model, version, key):
    assembling it again upserts it (same hash: nothing changes)."""

    __tablename__ = "data_model_archive"
    __table_args__ = (
        Index("ix_data_model_archive_model_archived", "model_id", "archived_at", "record_key"),
    )

    model_id: Mapped[str] = mapped_column(ForeignKey("data_models.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    campaign_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    document: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DataTarget(Base):
    """A downstream store a model's records are synced to: it receives the fields of its
    ``system`` (``config``: the kind of store and where — see ``targets``)."""

    __tablename__ = "data_model_targets"
    __table_args__ = (Index("uq_data_model_targets_name", "model_id", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("data_models.id"))
    name: Mapped[str] = mapped_column(String(64))
    system: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """The delivery ledger: one row per (target, record) — the hash wanted there, the hash
    delivered, the state (``pending``, ``delivered``, ``dead``), attempts, the next attempt
    and the last error. A record that changes goes back to ``pending``."""

    __tablename__ = "data_model_deliveries"
    __table_args__ = (
        Index("ix_data_model_deliveries_due", "state", "next_attempt_at"),
        Index("ix_data_model_deliveries_model_state", "model_id", "state", "record_key"),
    )

    target_id: Mapped[str] = mapped_column(ForeignKey("data_model_targets.id"), primary_key=True)
    record_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    delivered_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SyncPosition(Base):
    """How far a backfill of a model has read its source (``incentive data-models sync``
    resumes from here)."""

    __tablename__ = "data_model_positions"

    model_id: Mapped[str] = mapped_column(ForeignKey("data_models.id"), primary_key=True)
    position: Mapped[str | None] = mapped_column(String(500), nullable=True)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AssemblyFailure(Base):
    """A record a sync could not assemble: the field, the rule and why (cleared when it
    assembles again)."""

    __tablename__ = "data_model_failures"

    model_id: Mapped[str] = mapped_column(ForeignKey("data_models.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    field: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(500))
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
