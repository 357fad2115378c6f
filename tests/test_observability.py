"""An unexpected error is one 500 problem with the request's id in its header and in its one
log line (issue 10, item 9)."""

from __future__ import annotations

import logging
from typing import Any

import httpx


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_unexpected_error_is_one_500_with_its_request_id(app: Any) -> None:
    async def boom() -> None:
        raise RuntimeError("planted")

    app.add_api_route("/boom", boom)
    seen = _Records()
    logging.getLogger().addHandler(seen)
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/boom", headers={"X-Request-ID": "req-boom-1"})
    finally:
        logging.getLogger().removeHandler(seen)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "req-boom-1"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/internal")
    tracebacks = [rec for rec in seen.records if rec.exc_info]
    assert len(tracebacks) == 1, [rec.getMessage() for rec in tracebacks]
    assert getattr(tracebacks[0], "request_id", None) == "req-boom-1"
