from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from incentive import demo
from incentive.auth.models import User
from incentive.db import Database
from incentive.ledger.models import Account


async def test_demo_data_loads_once_balanced_and_usable(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    assert await demo.load_if_empty(db) is True
    assert await demo.load_if_empty(db) is False
    async with db.unit_of_work() as s:
        assert await s.scalar(select(func.count()).select_from(User)) == 3
        # Double entry: every asset's balances sum to zero.
        sums = (
            await s.execute(
                select(Account.asset, func.sum(Account.balance)).group_by(Account.asset)
            )
        ).all()
    assert {asset for asset, _ in sums} == {"POINTS", "CNY"}
    assert all(total == 0 for _, total in sums)
    r = await client.post(
        "/api/v1/auth/token", json={"username": "alice", "password": demo.DEMO_PASSWORD}
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    r = await client.get("/api/v1/me/accounts", headers={"Authorization": f"Bearer {token}"})
    assert [a["balance"] for a in r.json()["items"]] == [demo.WELCOME_POINTS]
