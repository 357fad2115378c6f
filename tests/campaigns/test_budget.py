"""Funding a campaign's budget through the ledger, exactly once per Idempotency-Key."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.db import Database
from incentive.ledger import service as ledger
from incentive.ledger.models import Transfer
from tests.campaigns.conftest import World, create, walk


async def _issuers(db: Database) -> dict[str, int]:
    async with db.unit_of_work() as s:
        cny = await ledger.open_account(
            s, owner_type="platform", owner_id="marketing", asset="CNY", allow_negative=True
        )
        pts = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        empty = await ledger.open_account(s, owner_type="platform", owner_id="petty", asset="CNY")
    return {"cny": cny.id, "points": pts.id, "empty": empty.id}


async def _balance(db: Database, account_id: int) -> int:
    async with db.unit_of_work() as s:
        return (await ledger.get_account(s, account_id)).balance


async def _transfers(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int((await s.execute(select(func.count()).select_from(Transfer))).scalar_one())


def _h(world: World, key: str | None) -> dict[str, str]:
    headers = dict(world.op.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def _fund(
    client: httpx.AsyncClient, world: World, cid: str, body: dict[str, Any], key: str | None
) -> httpx.Response:
    return await client.post(f"/api/v1/campaigns/{cid}/budget", json=body, headers=_h(world, key))


async def test_funding_replayed_moves_value_once(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    acc = await _issuers(db)
    c = await create(client, world.ma, kind="rebate")
    body = {"amount": 100_000, "from_account_id": acc["cny"]}
    first = await _fund(client, world, c["id"], body, "fund-1")
    assert first.status_code == 201, first.text
    assert first.json()["balance"] == 100_000
    assert first.json()["asset"] == "CNY"
    assert first.json()["account_id"] == c["budget_account_id"]

    again = await _fund(client, world, c["id"], body, "fund-1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await _balance(db, c["budget_account_id"]) == 100_000
    assert await _transfers(db) == 1

    # same key, other amount: refused, nothing moves
    other = await _fund(client, world, c["id"], {**body, "amount": 5}, "fund-1")
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency-key-reused")

    second = await _fund(client, world, c["id"], {**body, "amount": 50}, "fund-2")
    assert second.status_code == 201
    assert await _balance(db, c["budget_account_id"]) == 100_050
    assert await _transfers(db) == 2

    r = await client.get(f"/api/v1/campaigns/{c['id']}/budget", headers=world.ma.headers)
    assert r.json() == {
        "campaign_id": c["id"],
        "account_id": c["budget_account_id"],
        "asset": "CNY",
        "balance": 100_050,
        "transfer_id": None,
    }


async def test_funding_refusals_move_nothing(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    acc = await _issuers(db)
    c = await create(client, world.ma, kind="rebate")
    budget = c["budget_account_id"]

    r = await _fund(client, world, c["id"], {"amount": 10, "from_account_id": acc["cny"]}, None)
    assert r.status_code == 422
    r = await _fund(client, world, c["id"], {"amount": 10, "from_account_id": acc["empty"]}, "k1")
    assert r.status_code == 409
    assert r.json()["type"].endswith("/insufficient-funds")
    r = await _fund(client, world, c["id"], {"amount": 10, "from_account_id": acc["points"]}, "k2")
    assert r.status_code == 409
    assert r.json()["type"].endswith("/asset-mismatch")
    r = await _fund(client, world, c["id"], {"amount": 0, "from_account_id": acc["cny"]}, "k3")
    assert r.status_code == 422
    r = await _fund(client, world, c["id"], {"amount": 1.5, "from_account_id": acc["cny"]}, "k4")
    assert r.status_code == 422
    r = await client.post(
        f"/api/v1/campaigns/{c['id']}/budget",
        json={"amount": 10, "from_account_id": acc["cny"]},
        headers={**world.ma.headers, "Idempotency-Key": "k5"},
    )
    assert r.status_code == 403
    r = await _fund(client, world, "f" * 32, {"amount": 10, "from_account_id": acc["cny"]}, "k6")
    assert r.status_code == 404

    await walk(client, world, c["id"], "cancelled")
    r = await _fund(client, world, c["id"], {"amount": 10, "from_account_id": acc["cny"]}, "k7")
    assert r.status_code == 409
    assert await _balance(db, budget) == 0
    assert await _transfers(db) == 0
    # A refused key is free again: the failed request stored nothing.
    c2 = await create(client, world.ma, kind="rebate")
    r = await _fund(client, world, c2["id"], {"amount": 10, "from_account_id": acc["cny"]}, "k1")
    assert r.status_code == 201
