"""The process's login throttle: on Redis when the deployment has one (every API process
shares the counters), else in this process's memory (the embedded deployment)."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.auth.throttle import LoginThrottle


async def start(app: FastAPI) -> None:
    redis = getattr(app.state, "redis", None)
    app.state.login_throttle = LoginThrottle.for_settings(
        app.state.settings, None if redis is None else redis.connection_pool
    )


async def stop(app: FastAPI) -> None:
    app.state.login_throttle = None
