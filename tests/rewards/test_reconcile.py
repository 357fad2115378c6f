"""An operator's reconcile resets a reward pool that drifted from the database (each
reward's total less the grants holding it) and claims go on from the truth; the stock read
sets the ``incentive_reward_stock`` gauge. On the embedded engine and on Redis."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import REGISTRY

from incentive.config import service as config_service
from incentive.db import Database
from incentive.rewards.grants import pool_of
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.rewards.conftest import claim, given, left, option, reward_campaign


def gauge(campaign_id: str, code: str) -> float | None:
    return REGISTRY.get_sample_value(
        "incentive_reward_stock", {"campaign_id": campaign_id, "reward": code}
    )


async def test_reconcile_resets_a_drifted_pool_to_the_database_and_claims_go_on(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "rewards.drain_seconds", 0.1, actor="test")
    await app.state.config.reload()
    chain = [option("A", stock=10), option("B", stock=5)]
    cid = (await reward_campaign(client, db, world, chain))["id"]
    people = await customers(db, app, 3)
    for person in people:
        assert (await claim(client, person.headers, cid)).json()["reward"] == "A"
    assert await left(client, world.op.headers, cid) == {"A": 7, "B": 5}
    assert gauge(cid, "A") == 7

    # The store drifted: A shows 1 unit left, B 50 (neither is the database's truth).
    engine = app.state.stock
    await engine.rebuild(pool_of(cid, "A"), [1])
    await engine.rebuild(pool_of(cid, "B"), [50])
    assert await left(client, world.op.headers, cid) == {"A": 1, "B": 50}

    refused = await client.post(
        f"/api/v1/campaigns/{cid}/rewards/reconcile", headers=world.ma.headers
    )
    assert refused.status_code in (403, 404), refused.text
    r = await client.post(f"/api/v1/campaigns/{cid}/rewards/reconcile", headers=world.op.headers)
    assert r.status_code == 200, r.text
    done = {x["code"]: x for x in r.json()["rewards"]}
    assert {
        c: (x["total"], x["held"], sum(x["before"]), sum(x["after"])) for c, x in done.items()
    } == {
        "A": (10, 3, 1, 7),
        "B": (5, 0, 50, 5),
    }
    assert await left(client, world.op.headers, cid) == {"A": 7, "B": 5}
    assert gauge(cid, "A") == 7

    newcomers = await customers(db, app, 13, prefix="n")
    answers = [await claim(client, p.headers, cid) for p in newcomers]
    assert [a.status_code for a in answers] == [201] * 12 + [409]
    assert await given(db, cid) == {"A": 10, "B": 5}
    assert await left(client, world.op.headers, cid) == {"A": 0, "B": 0}
