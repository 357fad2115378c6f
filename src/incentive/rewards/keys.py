"""Live configuration of rewards: stock split, the message webhook, the stock watch."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

REWARD_BUCKETS = register_key(
    "rewards.buckets",
    Annotated[int, Field(ge=1, le=1024)],
    8,
    "Sub-buckets each reward's stock pool is split into (when its rules do not say).",
)
MESSAGE_WEBHOOK_URL = register_key(
    "rewards.message_webhook_url",
    Annotated[str, Field(max_length=2000, pattern=r"^(https?://[^\s]+)?$")],
    "",
    "Where message rewards are POSTed (Standard Webhooks signed with "
    "INCENTIVE_REWARDS_WEBHOOK_SECRET); empty: message rewards cannot be delivered and the "
    "chain falls back past them.",
)
WATCH_SECONDS = register_key(
    "rewards.stock_watch_seconds",
    Annotated[float, Field(ge=0.1, le=3600)],
    1.0,
    "How often workers read every live reward's stock: gauges, low-stock alerts, and a "
    "rebuild of pools the stock store lost.",
)
DRAIN_SECONDS = register_key(
    "rewards.drain_seconds",
    Annotated[float, Field(ge=0, le=60)],
    2.0,
    "How long reconcile waits, with the campaign's pools taken away, for grants in flight to "
    "commit before it counts the database.",
)
