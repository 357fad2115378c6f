"""The report's per-day rows (``GET /campaigns/{id}/rewards/report``): a grant counts on the
UTC day it was given (``reward_grants.day``), whatever the server's local time zone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from incentive.db import Database
from incentive.rewards import grants
from incentive.rewards.models import RewardGrant
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.rewards.conftest import claim, grants_of, option, reward_campaign


@pytest.fixture
def server_in_shanghai() -> Iterator[None]:
    """The process's local time zone is UTC+8: 23:59 UTC and 00:00 UTC fall on one local
    day there, two UTC days."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


async def report_rows(
    client: httpx.AsyncClient, headers: dict[str, str], campaign_id: str
) -> list[tuple[Any, ...]]:
    r = await client.get(f"/api/v1/campaigns/{campaign_id}/rewards/report", headers=headers)
    assert r.status_code == 200, r.text
    return [
        (
            x["day"],
            x["reward"],
            x["user_type"],
            x["given"],
            x["amount"],
            x["with_fallback"],
            x["fallbacks"],
        )
        for x in r.json()["rows"]
    ]


async def test_grants_of_two_days_are_counted_on_their_own_day(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    campaign = await reward_campaign(
        client, db, world, [option("a", stock=1), option("b", stock=10)]
    )
    cid = campaign["id"]
    people = await customers(db, app, 4)
    for person in people:
        assert (await claim(client, person.headers, cid)).status_code == 201
    rows = {g.customer_id: g for g in await grants_of(db, cid)}
    for g in rows.values():  # the day is the UTC date of the grant
        assert g.day == g.created_at.astimezone(UTC).date().isoformat()
    today = rows[people[0].user.id].day
    assert {g.day for g in rows.values()} == {today}
    # One of b's grants was given yesterday (what the report reads: its day and its time).
    yesterday = (datetime.fromisoformat(today) - timedelta(days=1)).date().isoformat()
    moved = rows[people[1].user.id]
    async with db.unit_of_work() as s:
        await s.execute(
            update(RewardGrant)
            .where(RewardGrant.id == moved.id)
            .values(day=yesterday, created_at=moved.created_at - timedelta(days=1))
        )
    assert await report_rows(client, world.op.headers, cid) == [
        (yesterday, "b", "first_time", 1, 10, 1, 1),
        (today, "a", "first_time", 1, 10, 0, 0),
        (today, "b", "first_time", 2, 20, 2, 2),
    ]


async def test_a_grant_at_midnight_utc_opens_a_new_day_whatever_the_servers_zone(
    client: httpx.AsyncClient,
    db: Database,
    app: Any,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    server_in_shanghai: None,
) -> None:
    campaign = await reward_campaign(client, db, world, [option("a", stock=5)], per_user_limit=2)
    cid = campaign["id"]
    alice, bob = await customers(db, app, 2)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        days=1
    )  # the next UTC midnight (the campaign runs for a week)
    clock = [midnight - timedelta(microseconds=1)]
    monkeypatch.setattr(grants, "utcnow", lambda: clock[0])
    assert (await claim(client, alice.headers, cid)).status_code == 201
    clock[0] = midnight
    assert (await claim(client, alice.headers, cid)).status_code == 201
    assert (await claim(client, bob.headers, cid)).status_code == 201
    first, second = (midnight - timedelta(days=1)).date().isoformat(), midnight.date().isoformat()
    assert sorted((g.customer_id, g.day) for g in await grants_of(db, cid)) == sorted(
        [(alice.user.id, first), (alice.user.id, second), (bob.user.id, second)]
    )
    assert await report_rows(client, world.op.headers, cid) == [
        (first, "a", "first_time", 1, 10, 0, 0),
        (second, "a", "first_time", 1, 10, 0, 0),
        (second, "a", "returning", 1, 10, 0, 0),
    ]
