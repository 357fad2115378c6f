"""Reward test world: the campaigns' world, reward campaigns funded from the platform, and
readers of the tables and the ledger from outside the app. Every test using ``stock_url``
runs on the embedded stock engine and on Redis (the production deployment)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.db import Database
from incentive.ledger.models import Account
from incentive.rewards.models import RewardGrant
from incentive.settings import Settings
from tests.activities.conftest import funding_account
from tests.campaigns.conftest import World, create, walk
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)
from tests.flash_sales.conftest import flash_cluster as flash_cluster  # noqa: F401  (fixture)
from tests.stock.conftest import RedisServer

_keys = itertools.count()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def stock_url(request: pytest.FixtureRequest, redis_url: str | None) -> str | None:
    """The embedded engine and Redis; a test parametrized indirectly with ``"cluster"`` runs
    on a real 3-master Redis Cluster instead."""
    if request.param == "embedded":
        return None
    if request.param == "cluster":
        nodes: list[RedisServer] = request.getfixturevalue("flash_cluster")
        return f"redis+cluster://127.0.0.1:{nodes[0].port}"
    assert redis_url
    return redis_url


@pytest.fixture
def settings(data_dir: Path, stock_url: str | None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        stock_url=stock_url,
        demo_data=False,
        log_level="WARNING",
        # Storms count every answer: a Redis connection may be waited for as long as the
        # test database's pool is (tests/conftest.py).
        redis_pool_timeout=30,
    )


def option(code: str, **fields: Any) -> dict[str, Any]:
    """A points reward of 10 by default."""
    return {"code": code, "type": "points", "delivery": "ledger", "amount": 10, **fields}


async def reward_campaign(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    rewards: list[dict[str, Any]],
    *,
    budget: int = 1_000_000,
    **rules: Any,
) -> dict[str, Any]:
    """An active reward campaign of the platform with this chain, funded with ``budget``
    points."""
    body = {"rewards": rewards, "per_user_limit": 1, **rules}
    campaign = await create(client, world.op, kind="reward", rules=body)
    await walk(
        client, world, campaign["id"], "pending_review", "approved", "active", owner=world.op
    )
    if budget:
        r = await client.post(
            f"/api/v1/campaigns/{campaign['id']}/budget",
            json={"amount": budget, "from_account_id": await points_funding(db)},
            headers={**world.op.headers, "Idempotency-Key": f"fund-{campaign['id']}"},
        )
        assert r.status_code == 201, r.text
    return campaign


async def points_funding(db: Database) -> int:
    return await funding_account(db, asset="POINTS")


async def claim(
    client: httpx.AsyncClient, headers: dict[str, str], campaign_id: str, key: str | None = None
) -> httpx.Response:
    return await client.post(
        f"/api/v1/campaigns/{campaign_id}/rewards/claims",
        headers={**headers, "Idempotency-Key": key or f"k-{next(_keys)}"},
    )


async def grants_of(db: Database, campaign_id: str) -> list[RewardGrant]:
    async with db.unit_of_work() as s:
        return list(
            await s.scalars(select(RewardGrant).where(RewardGrant.campaign_id == campaign_id))
        )


async def given(db: Database, campaign_id: str) -> Counter[str | None]:
    return Counter(g.reward_code for g in await grants_of(db, campaign_id))


async def balance(db: Database, owner_type: str, owner_id: str, asset: str = "POINTS") -> int:
    async with db.unit_of_work() as s:
        value = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.owner_type == owner_type,
                Account.owner_id == owner_id,
                Account.asset == asset,
            )
        )
    return int(value or 0)


async def customer_points(db: Database) -> int:
    async with db.unit_of_work() as s:
        value = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.owner_type == "user", Account.asset == "POINTS"
            )
        )
    return int(value or 0)


async def left(
    client: httpx.AsyncClient, headers: dict[str, str], campaign_id: str
) -> dict[str, Any]:
    r = await client.get(f"/api/v1/campaigns/{campaign_id}/rewards", headers=headers)
    assert r.status_code == 200, r.text
    return {x["code"]: x["left"] for x in r.json()["rewards"]}
