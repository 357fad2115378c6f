"""The sale facts a purchase reads are cached per process and refreshed single-flight: when
they expire under load, one request runs the query and the others wait for its result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from incentive.db import Database
from incentive.flash_sales import purchases
from tests.flash_sales.conftest import Sales, make_customers


async def test_expired_facts_are_refreshed_by_one_query_for_many_concurrent_buyers(
    sales: Sales, db: Database, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale = await sales.create(1000, limit=1, buckets=4)
    buyers = await make_customers(db, app, 60)
    clock = [1_000.0]
    monkeypatch.setattr(purchases, "facts_clock", lambda: clock[0])
    loads: list[str] = []
    original = purchases.campaigns.campaign_facts

    async def counted(session: Any, sale_id: str) -> Any:
        loads.append(sale_id)
        await asyncio.sleep(0.2)  # a slow query: every buyer below arrives while it runs
        return await original(session, sale_id)

    monkeypatch.setattr(purchases.campaigns, "campaign_facts", counted)
    assert (await sales.buy(buyers[0], sale)).status_code == 201  # facts cached at t=1000
    assert loads == [sale]
    clock[0] += purchases.FACTS_TTL_SECONDS + 1  # expired
    responses = await asyncio.gather(*(sales.buy(b, sale) for b in buyers[1:]))
    assert [r.status_code for r in responses] == [201] * 59
    assert loads == [sale, sale]  # one refresh for 59 concurrent requests, not 59
    # Fresh again: no query at all until the next expiry.
    assert (await sales.buy(buyers[0], sale)).json()["type"].endswith("/limit-exceeded")
    assert loads == [sale, sale]


async def test_a_failed_refresh_answers_every_waiter_and_is_not_cached(
    sales: Sales, db: Database, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale = await sales.create(100, limit=1, buckets=2)
    buyers = await make_customers(db, app, 10)
    monkeypatch.setattr(purchases, "facts_clock", lambda: 1_000.0)  # nothing expires by itself
    loads: list[str] = []
    original = purchases.campaigns.campaign_facts

    async def failing(session: Any, sale_id: str) -> Any:
        loads.append(sale_id)
        await asyncio.sleep(0.2)
        if len(loads) == 1:
            raise ConnectionError("database went away")
        return await original(session, sale_id)

    monkeypatch.setattr(purchases.campaigns, "campaign_facts", failing)
    failed = await asyncio.gather(*(sales.buy(b, sale) for b in buyers[:5]))
    statuses = [r.status_code for r in failed]
    # Those waiting on the failed refresh all get its failure (a lost database: 503 with
    # Retry-After); one arriving after it starts the next refresh, which is then cached.
    assert 503 in statuses
    assert set(statuses) <= {503, 201}
    assert all(r.headers["retry-after"] for r in failed if r.status_code == 503)
    assert loads == ([sale] if 201 not in statuses else [sale, sale])
    responses = await asyncio.gather(*(sales.buy(b, sale) for b in buyers[5:]))
    assert [r.status_code for r in responses] == [201] * 5
    assert loads == [sale, sale]
