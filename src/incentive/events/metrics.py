"""Prometheus metrics of the outbox, the relay and the subscribers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHED = Counter("incentive_events_published_total", "Events committed to the outbox", ["topic"])
RELAYED = Counter(
    "incentive_events_relayed_total", "Outbox events handed to the transport", ["topic"]
)
RELAY_FAILURES = Counter(
    "incentive_events_relay_failures_total", "Outbox events the transport did not take", ["topic"]
)
DELIVERED = Counter(
    "incentive_events_delivered_total", "Events handled successfully", ["subscriber"]
)
DUPLICATES = Counter(
    "incentive_events_duplicates_total",
    "Redelivered events skipped because the subscriber had handled them",
    ["subscriber"],
)
HANDLER_FAILURES = Counter(
    "incentive_events_handler_failures_total", "Handler runs that raised", ["subscriber"]
)
OUTBOX_LAG = Gauge(
    "incentive_events_outbox_lag_seconds", "Age of the oldest unpublished outbox event"
)
OUTBOX_PENDING = Gauge("incentive_events_outbox_pending", "Unpublished outbox events")
