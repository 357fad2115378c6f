"""create_app(): routers, middleware, error handlers and the process lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from sqlalchemy import text
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from incentive import __version__, domains
from incentive.auth.keyring import KeyRing
from incentive.db import Database, set_database
from incentive.deps import declared_query_only
from incentive.errors import NotFound, Unauthorized, install_handlers, problems
from incentive.observability import (
    RequestContextMiddleware,
    configure_logging,
    metrics_response,
)
from incentive.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A background task gets the app and runs until cancelled (config refresher, outbox relay...).
BackgroundTask = Callable[[FastAPI], Awaitable[None]]


def operation_id(route: APIRoute) -> str:
    """The operation id is the route's name in camelCase (``create_flash_sale`` ->
    ``createFlashSale``): it names the resource, and client generators use it as is."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    owns_db = db is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from incentive import bootstrap

        database = db or Database.for_settings(settings)
        app.state.db = database
        set_database(database)
        await bootstrap.start(app, settings, database, migrate=owns_db)
        tasks = [asyncio.create_task(t(app)) for t in app.state.background_tasks]
        try:
            yield
        finally:
            async with database.draining():
                for t in tasks:
                    t.cancel()
                # Bounded: a task stuck closing a Redis connection (redis/redis-py#3941) must
                # not hold the shutdown forever.
                _, stuck = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
                if stuck:
                    log.warning("background tasks still stopping after 10 s; left behind")
            await bootstrap.stop(app)
            if owns_db:
                await database.dispose()

    # FastAPIOffline serves Swagger UI and ReDoc from files in the package: /docs works on a
    # host without internet access.
    app = FastAPIOffline(
        title="Incentive",
        version=__version__,
        description="Marketing middle platform: ledger, campaigns, coupons, flash sales, "
        "partner points files. Errors are RFC 9457 application/problem+json.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        dependencies=[Depends(declared_query_only)],
        # No badge fetched from the public schema validator.
        swagger_ui_parameters={"validatorUrl": None},
        # No OpenTelemetry here (metrics are Prometheus, logs JSON lines): with it on, FastAPI
        # asks OpenTelemetry for its providers on every request, and each ask reads
        # os.environ.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.keyring = KeyRing.load(settings.data_dir / "keys", settings.signing_key_file)
    app.state.background_tasks = []
    configure_logging(settings.log_level, settings.log_json)
    app.add_middleware(RequestContextMiddleware)
    if settings.forwarded_allow_ips:
        # Outermost: the client address every layer sees (logs, login throttling) is the
        # X-Forwarded-For client only when the peer is one of the configured proxies.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    install_handlers(app)

    for router in domains.routers():
        app.include_router(router, prefix="/api/v1")
    for router in domains.public_routers():
        app.include_router(router)

    @app.get("/healthz", name="get_health", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: 200 while the process serves requests (checks nothing else)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        name="get_readiness",
        tags=["operations"],
        responses={503: {"description": "not ready"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: 200 when the database (and Redis, if configured) answer; 503 otherwise,
        with each check's result."""
        checks: dict[str, str] = {}
        ok = True
        try:
            async with request.app.state.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports any failure, it must not raise
            checks["database"] = f"error: {type(exc).__name__}"
            ok = False
        redis = getattr(request.app.state, "redis", None)
        if redis is not None:
            try:
                await redis.ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"error: {type(exc).__name__}"
                ok = False
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get(
        "/metrics",
        name="get_metrics",
        tags=["operations"],
        response_class=PlainTextResponse,
        responses=problems(Unauthorized, NotFound),
    )
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus metrics, for the holder of `INCENTIVE_METRICS_TOKEN` (as a bearer
        token); not served (404) while no token is configured."""
        return metrics_response(request, settings.metrics_token)

    return app
