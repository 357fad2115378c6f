"""Live configuration of the relay and the stream consumers (see ``incentive.config``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

RELAY_BATCH_SIZE = register_key(
    "events.relay_batch_size",
    Annotated[int, Field(ge=1, le=10_000)],
    500,
    "Outbox events a relay claims per pass.",
)
RELAY_POLL_SECONDS = register_key(
    "events.relay_poll_seconds",
    Annotated[float, Field(ge=0.05, le=60)],
    0.5,
    "How often an idle relay looks for events committed by other processes.",
)
CLAIM_LEASE_SECONDS = register_key(
    "events.claim_lease_seconds",
    Annotated[float, Field(ge=1, le=3600)],
    60.0,
    "How long a claimed outbox event is reserved for its relay before another may retry it.",
)
RETRY_BASE_SECONDS = register_key(
    "events.retry_base_seconds",
    Annotated[float, Field(ge=0.01, le=3600)],
    1.0,
    "First retry delay of an event whose delivery failed; doubles per attempt.",
)
RETRY_MAX_SECONDS = register_key(
    "events.retry_max_seconds",
    Annotated[float, Field(ge=1, le=86_400)],
    300.0,
    "Longest retry delay of a failing event (events are retried forever, never dropped).",
)
STREAM_CLAIM_IDLE_SECONDS = register_key(
    "events.stream_claim_idle_seconds",
    Annotated[float, Field(ge=0.1, le=86_400)],
    30.0,
    "Redis Streams: a pending message idle this long is claimed and retried by any consumer.",
)
STREAM_MAXLEN = register_key(
    "events.stream_maxlen",
    Annotated[int, Field(ge=1_000, le=100_000_000)],
    1_000_000,
    "Redis Streams: approximate entries kept per topic stream.",
)
OUTBOX_RETENTION_HOURS = register_key(
    "events.outbox_retention_hours",
    Annotated[int, Field(ge=1, le=87_600)],
    168,
    "Published outbox rows older than this are deleted by the relay.",
)
PROCESSED_RETENTION_DAYS = register_key(
    "events.processed_retention_days",
    Annotated[int, Field(ge=1, le=3_650)],
    30,
    "processed_events rows (redelivery guards) older than this are deleted by the relay.",
)
