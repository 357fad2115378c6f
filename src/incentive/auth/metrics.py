"""Prometheus counters of identity: login outcomes and refused credentials."""

from __future__ import annotations

from prometheus_client import Counter

LOGINS = Counter("incentive_auth_logins_total", "Login attempts by outcome", ["outcome"])
REJECTED_CREDENTIALS = Counter(
    "incentive_auth_rejected_credentials_total",
    "Requests refused for missing, invalid, expired or revoked credentials",
    ["kind"],
)
