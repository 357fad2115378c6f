"""Every API process gives rewards (its claim path caches each campaign's chain); workers
watch the stock: gauges, low-stock alerts, and pools the stock store lost rebuilt."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.domains import WorkerJob
from incentive.rewards import stock
from incentive.rewards.claims import Claims
from incentive.rewards.keys import WATCH_SECONDS


async def start(app: FastAPI) -> None:
    app.state.rewards = Claims(app.state.db, app.state.stock)


async def _watch(app: FastAPI) -> None:
    await stock.watch(app.state.db, app.state.stock)


JOBS = (WorkerJob("rewards.stock_watch", _watch, every=WATCH_SECONDS),)
