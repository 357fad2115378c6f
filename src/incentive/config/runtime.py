"""Live configuration in a process: loaded at start, refreshed by a background task."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.config import live


async def start(app: FastAPI) -> None:
    await live.start(app, app.state.db, app.state.settings.config_refresh_seconds)


async def stop(app: FastAPI) -> None:
    live.stop(app)
