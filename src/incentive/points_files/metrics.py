"""Prometheus metrics of the points-file pipeline (per worker process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FILES = Counter(
    "incentive_points_files_transitions_total", "Points files entering a state", ["state"]
)
STAGE_SECONDS = Histogram(
    "incentive_points_file_stage_seconds",
    "Time of one pipeline stage of one file (by the state it started from)",
    ["state"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RECORDS_STAGED = Counter("incentive_points_records_staged_total", "Records staged")
RECORDS_CREDITED = Counter(
    "incentive_points_records_batched_total", "Records finished by crediting batches", ["result"]
)
BATCHES = Counter("incentive_points_batches_total", "Crediting batches", ["event"])
TARGET_CALLS = Counter(
    "incentive_points_target_calls_total",
    "Crediting calls by target and result",
    ["target", "result"],
)
BATCH_SIZE = Gauge(
    "incentive_points_batch_size", "Current adaptive batch size per crediting target", ["target"]
)
CONCURRENCY = Gauge(
    "incentive_points_concurrency",
    "Current adaptive crediting concurrency per crediting target",
    ["target"],
)
DELIVERIES = Counter(
    "incentive_points_answer_deliveries_total", "Answer file delivery attempts", ["result"]
)
