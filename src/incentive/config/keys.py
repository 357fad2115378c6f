"""Live keys of the points-file pipeline and the ledger (a domain's own keys live in its
``keys.py``, listed in ``incentive.domains``); reading is ``live_config.get(KEY)`` or
``live_config.get("points_file.batch_size")``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from incentive.config.registry import register_key

POINTS_FILE_BATCH_SIZE = register_key(
    "points_file.batch_size",
    Annotated[int, Field(ge=100, le=50_000)],
    5_000,
    "Upper bound on records credited per batch of a partner points file (adaptive control "
    "may go lower under pressure, never higher).",
)
POINTS_FILE_WORKERS = register_key(
    "points_file.workers",
    Annotated[int, Field(ge=1, le=64)],
    4,
    "Upper bound on concurrent crediting workers per points file.",
)
LEDGER_MAX_BATCH = register_key(
    "ledger.max_batch",
    Annotated[int, Field(ge=1, le=10_000)],
    10_000,
    "Most transfers accepted in one ledger batch request.",
)
