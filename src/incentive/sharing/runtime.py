"""Every process that evaluates activities records sharing's conversions (an activities
observer, see ``activities/observers.py``)."""

from __future__ import annotations

from fastapi import FastAPI

from incentive.activities.observers import register_observer
from incentive.campaigns import participation
from incentive.sharing.conversions import observe, observe_participation


async def start(app: FastAPI) -> None:
    register_observer("sharing", observe)
    participation.register_observer("sharing", observe_participation)
