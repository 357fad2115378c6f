"""Every process matches with a current copy of the word lists (``screen.py``), and listens
to campaign status changes to screen submissions (``service.on_move``, registered on import)."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.review import screen
from incentive.review import service as _registers_the_listener  # noqa: F401


async def start(app: FastAPI) -> None:
    await screen.start(app)


async def stop(app: FastAPI) -> None:
    screen.stop(app)
