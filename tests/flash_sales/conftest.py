"""Flash-sale fixtures: each test runs on the embedded engine, on Redis (the database of
``INCENTIVE_TEST_REDIS_URL``: runs sharing a machine keep apart by their own database
numbers; its keys are named by sale id) and on a real 3-master Redis Cluster started for
the session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from incentive.auth.models import User
from incentive.auth.tokens import issue_access_token
from incentive.db import Database, new_id, utcnow
from incentive.settings import Settings
from tests.factories import Actor, make_user
from tests.stock.conftest import RedisServer, start_cluster


@pytest.fixture(scope="session")
def flash_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    nodes = start_cluster(tmp_path_factory.mktemp("flash-cluster"))
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
def stock_url(request: pytest.FixtureRequest, redis_url: str | None) -> str | None:
    if request.param == "embedded":
        return None
    if request.param == "redis":
        assert redis_url
        return redis_url
    nodes: list[RedisServer] = request.getfixturevalue("flash_cluster")
    return f"redis+cluster://127.0.0.1:{nodes[0].port}"


@pytest.fixture
def settings(data_dir: Path, stock_url: str | None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        stock_url=stock_url,
        demo_data=False,
        log_level="WARNING",
        # The stampede tests count every answer exactly (200 concurrent purchases on one event
        # loop, CI running both suites side by side): a Redis connection may be waited for as
        # long as the test database's pool is (tests/conftest.py). The default's 503 after
        # its own wait is tests/test_unavailable.py's.
        redis_pool_timeout=30,
    )


async def make_customers(db: Database, app: Any, n: int) -> list[Actor]:
    """``n`` customers in one insert, each with a token minted by the app's key ring."""
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "username": f"c{i}-{new_id()[:8]}",
            "display_name": "",
            "password_hash": "-",
            "role": "customer",
            "merchant_id": None,
            "blocked": False,
            "created_at": now,
        }
        for i in range(n)
    ]
    async with db.unit_of_work() as s:
        await s.execute(insert(User), rows)
    actors = []
    for row in rows:
        user = User(**row)
        token, _ = issue_access_token(
            app.state.keyring,
            user_id=user.id,
            name=user.username,
            role="customer",
            merchant_id=None,
            ttl_seconds=3600,
        )
        actors.append(Actor(user, token))
    return actors


@dataclass
class Sales:
    client: httpx.AsyncClient
    operator: Actor
    db: Database
    app: Any

    async def create(
        self,
        total: int,
        *,
        limit: int = 1,
        buckets: int = 8,
        activate: bool = True,
        opens_in: timedelta = timedelta(seconds=-1),
    ) -> str:
        now = utcnow()
        body = {
            "name": "Flash",
            "sku": "SKU-1",
            "item_name": "Phone",
            "price_fen": 99_900,
            "total_stock": total,
            "per_user_limit": limit,
            "buckets": buckets,
            "starts_at": (now + opens_in).isoformat(),
            "ends_at": (now + timedelta(hours=1)).isoformat(),
        }
        h = self.operator.headers
        r = await self.client.post("/api/v1/flash-sales", json=body, headers=h)
        assert r.status_code == 201, r.text
        sale_id = str(r.json()["id"])
        r = await self.client.post(
            f"/api/v1/campaigns/{sale_id}/transitions", json={"to": "pending_review"}, headers=h
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "approved", r.text  # the automated review passed it
        if activate:
            r = await self.client.post(f"/api/v1/flash-sales/{sale_id}/activate", headers=h)
            assert r.status_code == 200, r.text
            await self.wait_split(sale_id)
        return sale_id

    async def wait_split(self, sale_id: str) -> dict[str, Any]:
        for _ in range(200):
            state = await self.state(sale_id)
            if state["split"]:
                return state
            await asyncio.sleep(0.05)
        raise AssertionError("stock was never split")

    async def state(self, sale_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/flash-sales/{sale_id}", headers=self.operator.headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def buy(
        self,
        actor: Actor,
        sale_id: str,
        quantity: int = 1,
        key: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        return await (client or self.client).post(
            f"/api/v1/flash-sales/{sale_id}/purchases",
            json={"quantity": quantity},
            headers={**actor.headers, "Idempotency-Key": key or new_id()},
        )


@pytest.fixture
async def sales(client: httpx.AsyncClient, db: Database, app: Any) -> Sales:
    operator = await make_user(db, app, username="flash-op", role="operator")
    return Sales(client, operator, db, app)
