"""Config centre API: operators only, validated, audited, problem+json on every refusal."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.config.models import ConfigAudit, ConfigEntry
from incentive.db import Database
from tests.factories import make_user

PROBLEM = "application/problem+json"


async def _count(db: Database, model: Any) -> int:
    async with db.unit_of_work() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def test_list_shows_every_key_with_defaults(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    r = await client.get("/api/v1/config?limit=200", headers=op.headers)
    assert r.status_code == 200
    assert r.json()["next_cursor"] is None
    by_key = {item["key"]: item for item in r.json()["items"]}
    buckets = by_key["flash_sale.buckets"]
    assert buckets["value"] == 16
    assert buckets["default"] == 16
    assert buckets["is_default"] is True
    assert buckets["version"] == 0
    assert buckets["value_schema"]["maximum"] == 1024
    assert by_key["points_file.batch_size"]["value"] == 5_000


async def test_put_changes_value_applies_locally_and_audits(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    r = await client.put(
        "/api/v1/config/flash_sale.buckets",
        json={"value": 64},
        headers={**op.headers, "X-Request-ID": "req-42"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["value"] == 64
    assert body["is_default"] is False
    assert body["version"] == 1
    assert body["updated_by"] == "user:op"

    r = await client.get("/api/v1/config/flash_sale.buckets", headers=op.headers)
    assert r.json()["value"] == 64
    # This process applies its own change at once (after-commit poke of the refresher).
    await app.state.config.refresh()
    assert app.state.config.get("flash_sale.buckets") == 64

    r = await client.put(
        "/api/v1/config/flash_sale.buckets", json={"value": 32}, headers=op.headers
    )
    assert r.json()["version"] == 2
    r = await client.get("/api/v1/config/flash_sale.buckets/audit", headers=op.headers)
    trail = r.json()["items"]
    assert [(a["old_value"], a["new_value"], a["version"]) for a in trail] == [
        (64, 32, 2),
        (16, 64, 1),
    ]
    assert trail[1]["request_id"] == "req-42"
    assert trail[1]["actor"] == "user:op"
    assert trail[1]["action"] == "set"


async def test_per_campaign_switches(db: Database, app: Any, client: httpx.AsyncClient) -> None:
    from incentive.flash_sales.keys import flash_sale_flow_open

    op = await make_user(db, app, username="op", role="operator")
    r = await client.put(
        "/api/v1/config/flash_sale.flow_control",
        json={"value": {"camp-1": False, "camp-2": True}},
        headers=op.headers,
    )
    assert r.status_code == 200
    await app.state.config.refresh()
    assert flash_sale_flow_open("camp-1") is False
    assert flash_sale_flow_open("camp-2") is True
    assert flash_sale_flow_open("camp-3") is True


async def test_invalid_value_is_422_naming_value_and_rule_and_writes_nothing(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    r = await client.put(
        "/api/v1/config/flash_sale.buckets", json={"value": 2048}, headers=op.headers
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)
    problem = r.json()
    assert problem["errors"][0]["field"] == "value"
    assert problem["errors"][0]["rule"] == "less_than_equal"
    assert "1024" in problem["errors"][0]["message"]

    r = await client.put(
        "/api/v1/config/flash_sale.flow_control",
        json={"value": {"c1": "maybe"}},
        headers=op.headers,
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "value.c1"

    r = await client.put("/api/v1/config/flash_sale.buckets", json={}, headers=op.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "value"
    assert await _count(db, ConfigEntry) == 0
    assert await _count(db, ConfigAudit) == 0


async def test_unknown_key_is_404_problem(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    for method in ("GET", "PUT", "DELETE"):
        r = await client.request(
            method,
            "/api/v1/config/no_such.key",
            headers=op.headers,
            json={"value": 1} if method == "PUT" else None,
        )
        assert r.status_code == 404, method
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["type"].endswith("/config-key-unknown")
    assert await _count(db, ConfigAudit) == 0


async def test_only_operators(db: Database, app: Any, client: httpx.AsyncClient) -> None:
    alice = await make_user(db, app, username="alice", role="customer")
    r = await client.put(
        "/api/v1/config/flash_sale.buckets", json={"value": 8}, headers=alice.headers
    )
    assert r.status_code == 403
    assert (await client.get("/api/v1/config", headers=alice.headers)).status_code == 403
    assert (await client.get("/api/v1/config")).status_code == 401
    assert await _count(db, ConfigEntry) == 0


async def test_expected_version_and_reset(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    url = "/api/v1/config/points_file.workers"
    r = await client.put(url, json={"value": 8, "expected_version": 0}, headers=op.headers)
    assert r.status_code == 200
    r = await client.put(url, json={"value": 9, "expected_version": 0}, headers=op.headers)
    assert r.status_code == 409
    assert r.json()["current_version"] == 1
    assert (await client.get(url, headers=op.headers)).json()["value"] == 8

    r = await client.delete(url, headers=op.headers)
    assert r.status_code == 200
    assert r.json()["is_default"] is True
    assert r.json()["value"] == 4
    trail = (await client.get(f"{url}/audit", headers=op.headers)).json()["items"]
    assert trail[0]["action"] == "reset"
    assert (trail[0]["old_value"], trail[0]["new_value"]) == (8, 4)
