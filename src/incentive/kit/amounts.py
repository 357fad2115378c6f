"""Typed integer amounts for request and rules models: money in fen, points, counts, rates.

Strict integers only (``1.5`` and ``"500"`` are refused), bounded far below BIGINT.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_FEN = 10**12  # ten billion yuan: far above any real campaign, far below BIGINT
MAX_POINTS = 10**12
MAX_COUNT = 10**9

Fen = Annotated[int, Field(strict=True, ge=0, le=MAX_FEN, description="amount in fen")]
PositiveFen = Annotated[int, Field(strict=True, ge=1, le=MAX_FEN, description="amount in fen")]
Points = Annotated[int, Field(strict=True, ge=0, le=MAX_POINTS, description="points")]
BasisPoints = Annotated[
    int, Field(strict=True, ge=0, le=10_000, description="rate in basis points (10000 = 100%)")
]
Count = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
