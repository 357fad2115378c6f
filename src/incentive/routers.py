"""Every domain's router, mounted under /api/v1, with the problem+json responses documented."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from incentive.auth.api import router as auth_router
from incentive.campaigns.api import router as campaigns_router
from incentive.config.api import router as config_router
from incentive.errors import PROBLEM_CONTENT_TYPE
from incentive.flash_sales.api import router as flash_sales_router
from incentive.ledger.api import router as ledger_router
from incentive.points_files.api import router as points_files_router


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` names each offending field and rule."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "model": Problem,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem("Bad request"),
    401: _problem("Missing, invalid, expired or revoked credentials"),
    403: _problem("Authenticated but not allowed"),
    404: _problem("Not found"),
    409: _problem("Conflict with the current state"),
    422: _problem("Invalid field: names the field and the rule"),
    429: _problem("Too many requests"),
    503: _problem("Temporarily unavailable"),
}


def include_routers(app: FastAPI) -> None:
    for router in (
        auth_router,
        config_router,
        ledger_router,
        campaigns_router,
        points_files_router,
        flash_sales_router,
    ):
        app.include_router(router, prefix="/api/v1", responses=PROBLEM_RESPONSES)
