"""JSON logs, Prometheus metrics and request ids (tenet 6)."""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import sys
import time
import uuid
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import SecretStr
from pythonjsonlogger.json import JsonFormatter
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from incentive.errors import PROBLEM_CONTENT_TYPE, NotFound, Unauthorized, internal_problem

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

HTTP_REQUESTS = Counter(
    "incentive_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "incentive_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

log = logging.getLogger("incentive")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
            return incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else None
    return None


class _RouteMetrics:
    """The labelled Prometheus children of each (method, route, status), made once each:
    ``labels()`` takes a lock and builds its key on every call."""

    def __init__(self) -> None:
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[method, route] = HTTP_LATENCY.labels(method, route)
        requests = self._requests.get((method, route, status))
        if requests is None:
            requests = self._requests[method, route, status] = HTTP_REQUESTS.labels(
                method, route, str(status)
            )
        requests.inc()
        latency.observe(seconds)


_UNLOGGED_ROUTES = frozenset({"/healthz", "/metrics"})


class RequestContextMiddleware:
    """Assigns/propagates X-Request-ID, records per-route metrics and one access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = _RouteMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        status = 500
        started = False
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Answered here, inside the request's context, so the 500 carries its id and the
            # one traceback logged names it (Starlette's outer handler would re-raise).
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if started:
                raise
            await _answer_internal_error(scope, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.observe(method, route, status, elapsed)
            if route not in _UNLOGGED_ROUTES and log.isEnabledFor(logging.INFO):
                extra: dict[str, Any] = {
                    "method": method,
                    "path": scope.get("path"),
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                }
                log.info("request", extra=extra)
            request_id_var.reset(token)


async def _answer_internal_error(scope: Scope, send: Send) -> None:
    body = json.dumps(internal_problem(scope.get("path"))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def metrics_response(request: Request, token: SecretStr | None) -> PlainTextResponse:
    """The Prometheus exposition, for the scraper holding ``INCENTIVE_METRICS_TOKEN`` only.

    Series carry ids (a flash sale's stock pool, …) that callers who may not see the sale
    must not learn, so ``/metrics`` is never public: without a configured token it is not
    served at all (404), and with one it needs ``Authorization: Bearer <token>`` (401).
    """
    if token is None or not token.get_secret_value():
        raise NotFound("metrics are not served: set INCENTIVE_METRICS_TOKEN to scrape them")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("the metrics token is missing or wrong")
    return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)
