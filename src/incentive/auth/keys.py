"""Live configuration of auth: self-service sign-up (off by default) and its ceiling."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config import register_key

SIGNUP_ENABLED = register_key(
    "auth.signup_enabled",
    bool,
    False,
    "Whether POST /auth/signup creates customer logins (off: 403 signup-closed).",
)
SIGNUP_MAX_PER_ADDRESS = register_key(
    "auth.signup_max_per_address",
    Annotated[int, Field(ge=1, le=1_000_000)],
    5,
    "Sign-up attempts one client address may make per auth.signup_window_seconds (then 429).",
)
SIGNUP_WINDOW_SECONDS = register_key(
    "auth.signup_window_seconds",
    Annotated[int, Field(ge=1, le=7 * 24 * 3600)],
    3600,
    "The moving window of the sign-up ceiling per address (seconds).",
)
