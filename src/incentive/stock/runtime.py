"""The process's stock engine: started for every domain that deducts stock (flash sales
now; reward stock and coupon quotas next), and installed for handlers and services that run
outside a request (event subscribers, workers)."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.stock.engine import StockEngine, stock_engine_from_url

_current: StockEngine | None = None


def install(engine: StockEngine | None) -> None:
    global _current
    _current = engine


def current() -> StockEngine:
    if _current is None:
        raise RuntimeError("no stock engine installed; the process did not start one")
    return _current


async def start(app: FastAPI) -> None:
    settings = app.state.settings
    engine = stock_engine_from_url(
        settings.stock_url or settings.redis_url,
        max_connections=settings.redis_pool_size,
        pool_timeout=settings.redis_pool_timeout,
    )
    app.state.stock = engine
    install(engine)


async def stop(app: FastAPI) -> None:
    engine = getattr(app.state, "stock", None)
    if engine is not None:
        install(None)
        await engine.aclose()
