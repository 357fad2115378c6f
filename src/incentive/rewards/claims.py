"""The claim path of one process: each reward campaign's chain, cached.

A claim needs the campaign's facts and its live chain; reading them per request would cost
two statements. They are cached for ``CHAIN_TTL_SECONDS`` and refreshed single-flight, so a
live change reaches every process within that plus one read (the process making the change
drops its copy at once: ``forget``).
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import service as campaigns
from incentive.db import Database
from incentive.rewards.grants import Chain, live_items
from incentive.stock import StockEngine

CHAIN_TTL_SECONDS = 1.0
# The clock of the chain cache (a test moves it to expire the chain).
chain_clock = time.monotonic


class Claims:
    """The claim path of one process: each campaign's chain, cached for
    ``CHAIN_TTL_SECONDS`` and refreshed single-flight (live changes reach every process
    within ``CHAIN_TTL_SECONDS`` plus one read)."""

    def __init__(self, db: Database, engine: StockEngine) -> None:
        self.db = db
        self.engine = engine
        self._chains: dict[str, Chain] = {}
        self._refreshing: dict[str, asyncio.Future[Chain]] = {}

    async def chain(self, campaign_id: str) -> Chain:
        cached = self._chains.get(campaign_id)
        if cached is not None and chain_clock() - cached.loaded_at < CHAIN_TTL_SECONDS:
            return cached
        refresh = self._refreshing.get(campaign_id)
        if refresh is None:
            # A task of its own: a waiter that gives up does not cancel it for the others.
            refresh = asyncio.ensure_future(self._load(campaign_id))
            self._refreshing[campaign_id] = refresh
            refresh.add_done_callback(lambda done: self._loaded(campaign_id, done))
        return await asyncio.shield(refresh)

    def forget(self, campaign_id: str) -> None:
        """Drop the cached chain (this process changed it)."""
        self._chains.pop(campaign_id, None)

    def _loaded(self, campaign_id: str, done: asyncio.Future[Chain]) -> None:
        del self._refreshing[campaign_id]
        if not done.cancelled() and done.exception() is None:
            self._chains[campaign_id] = done.result()

    async def _load(self, campaign_id: str) -> Chain:
        # A read on the hot path: never queued behind a write (Database.reader()).
        async with self.db.reader() as conn, AsyncSession(bind=conn) as session:
            campaign = await campaigns.campaign_facts(session, campaign_id)
            items = await live_items(session, campaign_id) if campaign.kind == "reward" else ()
            return Chain(campaign, items, chain_clock())
