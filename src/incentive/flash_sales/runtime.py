"""Every API process records its own purchases (group commit), worker or not."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.flash_sales.purchases import Purchases


async def start(app: FastAPI) -> None:
    purchases = Purchases(app.state.db, app.state.stock)
    app.state.flash_sales = purchases

    async def _recorder(app: FastAPI) -> None:
        await purchases.recorder.run()

    app.state.background_tasks.append(_recorder)
