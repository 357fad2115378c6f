"""create_app(): routers, middleware, error handlers and the process lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from incentive import __version__
from incentive.auth.keys import KeyRing
from incentive.db import Database, set_database
from incentive.errors import PROBLEM_CONTENT_TYPE, IncentiveError
from incentive.observability import RequestContextMiddleware, configure_logging
from incentive.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A background task gets the app and runs until cancelled (config refresher, outbox relay...).
BackgroundTask = Callable[[FastAPI], Awaitable[None]]


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(IncentiveError)
    async def _domain(request: Request, exc: IncentiveError) -> JSONResponse:
        if exc.status == 503:
            # An answer by design (flow control closed, a store down, retry later): one line,
            # no traceback — a paused flash sale would otherwise log thousands of them a second.
            log.warning("unavailable", extra={"problem": exc.detail, "path": request.url.path})
        elif exc.status >= 500:
            log.error("domain error", exc_info=exc)
        return problem_response(exc.status, exc.to_problem(request.url.path), exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            if loc and loc[0] in ("body", "query", "path", "header"):
                where, field = loc[0], ".".join(loc[1:])
            else:
                where, field = "body", ".".join(loc)
            errors.append(
                {
                    "field": field or where,
                    "in": where,
                    "rule": err.get("type", "invalid"),
                    "message": err.get("msg", ""),
                }
            )
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        body = {
            "type": "https://incentive.dev/problems/validation",
            "title": "Request validation failed",
            "status": 422,
            "detail": f"{first['field']}: {first['message']}",
            "instance": request.url.path,
            "errors": errors,
        }
        return problem_response(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {
            "type": "about:blank",
            "title": str(exc.detail) if exc.detail else "HTTP error",
            "status": exc.status_code,
            "detail": str(exc.detail),
            "instance": request.url.path,
        }
        return problem_response(exc.status_code, body, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        body = {
            "type": "https://incentive.dev/problems/internal",
            "title": "Internal error",
            "status": 500,
            "detail": "internal error; see logs with this request id",
            "instance": request.url.path,
        }
        return problem_response(500, body)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    owns_db = db is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from incentive import bootstrap

        database = db or Database(settings.resolved_database_url)
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
                await asyncio.gather(*tasks, return_exceptions=True)
            await bootstrap.stop(app)
            if owns_db:
                await database.dispose()

    app = FastAPI(
        title="Incentive",
        version=__version__,
        description="Marketing middle platform: ledger, campaigns, coupons, flash sales, "
        "partner points files. Errors are RFC 9457 application/problem+json.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keyring = KeyRing.load(settings.data_dir / "keys", settings.signing_key_file)
    app.state.background_tasks = []
    configure_logging(settings.log_level, settings.log_json)
    app.add_middleware(RequestContextMiddleware)
    _install_error_handlers(app)

    from incentive.routers import include_routers

    include_routers(app)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> JSONResponse:
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

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app
