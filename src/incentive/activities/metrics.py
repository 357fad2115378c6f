"""Prometheus counters of the activities."""

from __future__ import annotations

from prometheus_client import Counter

RECEIVED = Counter(
    "incentive_activities_received_total",
    "Activities stored (replays of a sender's id not counted)",
    ["type", "mode"],
)
OUTCOMES = Counter(
    "incentive_activity_outcomes_total",
    "Campaign answers to activities",
    ["kind", "status", "reason"],
)
