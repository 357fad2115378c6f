from __future__ import annotations

import httpx

from incentive.db import Database
from tests.factories import make_user


async def test_health_and_me(client: httpx.AsyncClient, app: object, db: Database) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.headers["x-request-id"]
    r = await client.get("/readyz")
    assert r.json()["checks"]["database"] == "ok"
    alice = await make_user(db, app, username="alice")
    r = await client.get("/api/v1/me", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["username"] == "alice"
    r = await client.get("/api/v1/me")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
