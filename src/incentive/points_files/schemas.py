"""Points-file API shapes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from incentive.kit.pagination import Page


class RecordCounts(BaseModel):
    total: int
    credited: int
    failed: int
    pending: int


class PointsFileOut(BaseModel):
    id: str
    partner: str
    name: str
    file_seq: int
    source: str
    state: str
    reason_code: str | None
    reason_detail: str
    size_bytes: int
    records: RecordCounts
    points_total: int | None = Field(description="the trailer's sum; null when beyond 64 bits")
    points_credited: int
    batches_done: int
    batches_in_flight: int
    batches_total: int
    batch_size: int | None
    concurrency: int | None
    throughput_records_per_s: float | None
    eta_seconds: float | None
    answer_name: str | None
    delivery_attempts: int
    delivery_error: str
    received_at: datetime
    credited_at: datetime | None
    answered_at: datetime | None
    delivered_at: datetime | None


class PointsFileSummary(BaseModel):
    id: str
    partner: str
    name: str
    file_seq: int
    state: str
    reason_code: str | None
    record_count: int
    received_at: datetime


class PointsFilePage(Page[PointsFileSummary]):
    """Points files, newest first."""


class PointsFileAccepted(BaseModel):
    id: str
    name: str
    state: str
    reason_code: str | None
