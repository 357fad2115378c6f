"""The campaign core's worker job: campaigns reach ``ended`` by themselves at ``ends_at``."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from incentive.campaigns import flows
from incentive.campaigns.keys import END_CHECK_SECONDS
from incentive.db import Database
from incentive.domains import WorkerJob

log = logging.getLogger(__name__)


async def end_due_campaigns(db: Database) -> list[str]:
    """End every campaign past its ``ends_at`` (in pages, one transaction each)."""
    ended: list[str] = []
    while True:
        async with db.unit_of_work() as session:
            page = await flows.end_due(session)
        ended += page
        if len(page) < flows.END_PAGE:
            break
    if ended:
        log.info("campaigns ended at ends_at", extra={"campaign_ids": ended})
    return ended


async def _end_due(app: FastAPI) -> None:
    await end_due_campaigns(app.state.db)


JOBS = (WorkerJob("campaigns.end_due", _end_due, every=END_CHECK_SECONDS),)
