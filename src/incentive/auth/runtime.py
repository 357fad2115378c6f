"""The process's login throttle: on Redis when the deployment has one (every API process
shares the counters), else in this process's memory (the embedded deployment); and the
caches of resolved callers, with their drop announcements on Redis (``principal_cache``)."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.auth import principal_cache
from incentive.auth.identity import load_pepper
from incentive.auth.principal_cache import Caches, PrincipalCache
from incentive.auth.throttle import LoginThrottle


async def start(app: FastAPI) -> None:
    redis = getattr(app.state, "redis", None)
    settings = app.state.settings
    app.state.login_throttle = LoginThrottle.for_settings(
        settings, None if redis is None else redis.connection_pool
    )
    app.state.identity_pepper = load_pepper(settings)
    ttl = settings.principal_cache_seconds
    caches = Caches(PrincipalCache(ttl), PrincipalCache(ttl))
    app.state.principal_caches = caches
    principal_cache.register(caches)
    if redis is not None:

        async def announcer(app: FastAPI) -> None:
            await principal_cache.run_announcer(caches, redis)

        app.state.background_tasks.append(announcer)


async def stop(app: FastAPI) -> None:
    app.state.login_throttle = None
    caches = getattr(app.state, "principal_caches", None)
    if caches is not None:
        principal_cache.unregister(caches)
        caches.clear()
