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


# --------------------------------------------------------------------------- /metrics
# Its series name ids of things that are not public (a flash sale's stock pool): it is served
# only to the holder of INCENTIVE_METRICS_TOKEN (issue 10, item 11).


async def test_metrics_are_not_served_without_a_configured_token(
    settings: Any, db: Any, client: httpx.AsyncClient, app: Any
) -> None:
    assert settings.metrics_token is None
    pool = "flash_sale:secret0123456789abcdef0123456789ab"
    await app.state.stock.split(pool, 10, 2)
    await app.state.stock.remaining(pool)  # the levels gauge now names the pool
    for headers in ({}, {"Authorization": "Bearer anything"}):
        r = await client.get("/metrics", headers=headers)
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert "secret0123" not in r.text
        assert "incentive_" not in r.text


async def test_metrics_need_the_configured_bearer_token(settings: Any, db: Any) -> None:
    from pydantic import SecretStr

    from incentive.app import create_app

    application = create_app(settings.model_copy(update={"metrics_token": SecretStr("s3cr3t")}), db)
    async with application.router.lifespan_context(application):
        pool = "flash_sale:hidden0123456789abcdef0123456789a"
        await application.state.stock.split(pool, 10, 2)
        await application.state.stock.remaining(pool)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer s3cr3t-and-more"},
                {"Authorization": "Basic s3cr3t"},
                {"Authorization": "s3cr3t"},
            ):
                r = await client.get("/metrics", headers=headers)
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "hidden0123" not in r.text
            r = await client.get("/metrics", headers={"Authorization": "Bearer s3cr3t"})
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            assert f'incentive_stock_bucket_remaining{{bucket="0",pool="{pool}"}} 5.0' in r.text
