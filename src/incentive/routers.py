"""Every domain's router, mounted under /api/v1."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.auth.api import router as auth_router


def include_routers(app: FastAPI) -> None:
    for router in (auth_router,):
        app.include_router(router, prefix="/api/v1")
