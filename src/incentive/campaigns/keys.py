"""Live configuration of the campaign core (see ``incentive.config``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

END_CHECK_SECONDS = register_key(
    "campaigns.end_check_seconds",
    Annotated[float, Field(ge=0.1, le=3600)],
    10.0,
    "How often a worker ends active and paused campaigns whose ends_at has passed.",
)
