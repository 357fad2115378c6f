"""Live configuration of the automated review (see ``incentive.config``)."""

from __future__ import annotations

from typing import Literal

from incentive.config import register_key

MODE = register_key(
    "review.mode",
    Literal["automatic", "assisted"],
    "automatic",
    "automatic: a clean submission is approved and a hit on a reject list rejects it, without "
    "a person; assisted: every submission waits for an operator, with its hits shown.",
)
