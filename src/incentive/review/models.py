"""Sensitive-word lists and review verdicts.

- ``word_lists``: a named list with its **severity** (``reject``: a hit rejects the campaign;
  ``hold``: a hit holds it for a person) and its **version**, which goes up by one with every
  change to the list (words added, removed, imported, severity); ``word_list_changes`` says
  what each version changed, who and when.
- ``review_revision``: one row whose counter goes up with every change to any list, in the
  change's transaction; each process polls it to know when to rebuild its matcher (as live
  configuration does with ``config_revision``).
- ``review_verdicts``: every decision on a submitted campaign — the automated one on
  submission and each person's; a held one is ``open`` (in the queue) until the campaign
  leaves ``pending_review`` — with the hits (field, offset, matched text, word, list and
  the list's version) and the versions of the lists it was checked against.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from incentive.db import Base, BigId, UTCDateTime, utcnow

SEVERITIES = ("reject", "hold")
VERDICTS = ("approved", "rejected", "held")
REVISION_ROW_ID = 1


class WordList(Base):
    __tablename__ = "word_lists"
    __table_args__ = (
        CheckConstraint("severity IN ('reject', 'hold')", name="word_list_severity_known"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    severity: Mapped[str] = mapped_column(String(8))
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    word_count: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SensitiveWord(Base):
    __tablename__ = "sensitive_words"

    list_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("word_lists.id", ondelete="CASCADE"), primary_key=True
    )
    word: Mapped[str] = mapped_column(String(100), primary_key=True)
    added_in: Mapped[int] = mapped_column(BigInteger)


class WordListChange(Base):
    """What one version of a list changed."""

    __tablename__ = "word_list_changes"
    __table_args__ = (Index("ix_word_list_changes_list", "list_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_id: Mapped[int] = mapped_column(BigId, ForeignKey("word_lists.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(16))
    words: Mapped[int] = mapped_column(BigInteger, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReviewRevision(Base):
    __tablename__ = "review_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class ReviewVerdict(Base):
    __tablename__ = "review_verdicts"
    __table_args__ = (
        CheckConstraint("verdict IN ('approved', 'rejected', 'held')", name="review_verdict_known"),
        Index("ix_review_verdicts_campaign", "campaign_id", "id"),
        Index("ix_review_verdicts_queue", "open", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    campaign_version: Mapped[int] = mapped_column(BigInteger)
    verdict: Mapped[str] = mapped_column(String(16))
    automated: Mapped[bool] = mapped_column(default=True)
    # A held verdict waits in the queue until the campaign leaves pending_review.
    open: Mapped[bool] = mapped_column(default=False)
    decided_by: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    hits: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # the first 200
    hit_count: Mapped[int] = mapped_column(BigInteger, default=0)
    lists: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
