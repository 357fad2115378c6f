"""Live configuration of data-model syncing."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

DELIVER_EVERY_SECONDS = register_key(
    "data_models.deliver_every_seconds",
    Annotated[float, Field(ge=0.05, le=3600)],
    1.0,
    "How often workers deliver due records to data-model targets.",
)
DELIVERY_ATTEMPTS = register_key(
    "data_models.delivery_attempts",
    Annotated[int, Field(ge=1, le=100)],
    10,
    "Attempts of one record at one target (1, 2, 4, 8 … minutes apart, at most 60) before it "
    "is a dead letter.",
)
DELIVERY_LEASE_SECONDS = register_key(
    "data_models.delivery_lease_seconds",
    Annotated[float, Field(ge=1, le=86_400)],
    300.0,
    "How long a worker holds the deliveries it claimed; a killed worker's are claimed again "
    "after it (and written again: targets upsert).",
)
