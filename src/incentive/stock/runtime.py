"""The process's stock engine, installed at start-up (bootstrap) for handlers and services
that run outside a request (event subscribers, workers)."""

from __future__ import annotations

from incentive.stock.engine import StockEngine

_current: StockEngine | None = None


def install(engine: StockEngine | None) -> None:
    global _current
    _current = engine


def current() -> StockEngine:
    if _current is None:
        raise RuntimeError("no stock engine installed; the process did not start one")
    return _current
