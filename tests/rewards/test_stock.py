"""Reward stock outside requests: the low-stock alert fires once per fall below the
threshold (event, metric, log line, ``low_since``) and a restock above it clears it. The
watch is run by the test (workers are not embedded), so every run is counted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from incentive.db import Database
from incentive.events.models import OutboxEvent
from incentive.rewards import stock
from incentive.rewards.models import RewardItem
from incentive.settings import Settings
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.rewards.conftest import claim, left, option, reward_campaign

ALERTS = "incentive_reward_low_stock_alerts_total"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"embedded_worker": False})


async def alerts(db: Database, campaign_id: str) -> list[dict[str, Any]]:
    async with db.unit_of_work() as s:
        rows = await s.scalars(
            select(OutboxEvent.payload)
            .where(OutboxEvent.topic == "rewards.stock_low", OutboxEvent.key == campaign_id)
            .order_by(OutboxEvent.id)
        )
        return [dict(p) for p in rows]


def counted(campaign_id: str, code: str) -> float:
    return REGISTRY.get_sample_value(ALERTS, {"campaign_id": campaign_id, "reward": code}) or 0.0


async def low_since(db: Database, campaign_id: str, code: str) -> Any:
    async with db.unit_of_work() as s:
        item = await s.get(RewardItem, (campaign_id, code))
        assert item is not None
        return item.low_since


async def test_a_reward_below_its_threshold_alerts_once_and_a_restock_clears_it(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    app: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain = [option("few", stock=5, low_stock_threshold=3), option("many", stock=100)]
    campaign = (await reward_campaign(client, db, world, chain))["id"]
    engine = app.state.stock
    people = await customers(db, app, 3)
    assert (await claim(client, people[0].headers, campaign)).status_code == 201
    await stock.watch(db, engine)  # 4 left: not below 3
    assert await alerts(db, campaign) == []
    assert counted(campaign, "few") == 0
    assert await low_since(db, campaign, "few") is None

    for person in people[1:]:
        assert (await claim(client, person.headers, campaign)).status_code == 201
    assert (await left(client, world.op.headers, campaign))["few"] == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="incentive.rewards.stock"):
        await stock.watch(db, engine)
    assert await alerts(db, campaign) == [
        {"campaign_id": campaign, "reward": "few", "left": 2, "threshold": 3}
    ]
    assert counted(campaign, "few") == 1
    warned = [r for r in caplog.records if r.getMessage() == "reward stock low"]
    assert [(r.levelno, getattr(r, "reward", None)) for r in warned] == [(logging.WARNING, "few")]
    assert await low_since(db, campaign, "few") is not None
    seen = await client.get(f"/api/v1/campaigns/{campaign}/rewards", headers=world.op.headers)
    assert {r["code"]: r["low_since"] is not None for r in seen.json()["rewards"]} == {
        "few": True,
        "many": False,
    }

    # Still low: another run (and two workers' runs at once) fire nothing more.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="incentive.rewards.stock"):
        await stock.watch(db, engine)
        await asyncio.gather(stock.watch(db, engine), stock.watch(db, engine))
    assert len(await alerts(db, campaign)) == 1
    assert counted(campaign, "few") == 1
    assert not [r for r in caplog.records if r.getMessage() == "reward stock low"]

    # A restock above the threshold clears it; falling below again alerts again.
    r = await client.post(
        f"/api/v1/campaigns/{campaign}/rewards/few/restocks",
        json={"units": 2},
        headers={**world.op.headers, "Idempotency-Key": "restock-few"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["left"] == 4
    await stock.watch(db, engine)
    assert await low_since(db, campaign, "few") is None
    assert len(await alerts(db, campaign)) == 1
    more = await customers(db, app, 2, prefix="d")
    for person in more:
        assert (await claim(client, person.headers, campaign)).status_code == 201
    await stock.watch(db, engine)
    assert [a["left"] for a in await alerts(db, campaign)] == [2, 2]
    assert counted(campaign, "few") == 2
    assert await low_since(db, campaign, "few") is not None


async def test_workers_watching_at_once_fire_one_alert(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    chain = [option("few", stock=2, low_stock_threshold=5)]
    campaign = (await reward_campaign(client, db, world, chain))["id"]
    engine = app.state.stock
    # Four workers' watches reading the same rows at once: one alert.
    await asyncio.gather(*(stock.watch(db, engine) for _ in range(4)))
    assert [a["left"] for a in await alerts(db, campaign)] == [2]
    assert counted(campaign, "few") == 1
