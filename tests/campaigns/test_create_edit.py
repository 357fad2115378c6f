"""Creating and editing campaigns: typed rules per kind, budget accounts, nothing written on
bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.campaigns.kinds import kind_names
from incentive.campaigns.models import Campaign
from incentive.db import Database
from incentive.events.models import OutboxEvent
from incentive.ledger import service as ledger
from tests.campaigns.conftest import (
    ASSETS,
    RULES,
    World,
    assisted_review,
    campaign_body,
    counts,
    create,
    walk,
)


@pytest.mark.parametrize("kind", kind_names())
async def test_create_each_kind_opens_empty_budget(
    db: Database, client: httpx.AsyncClient, world: World, kind: str
) -> None:
    c = await create(client, world.ma, kind=kind)
    assert c["status"] == "draft"
    assert c["kind"] == kind
    assert c["owner_type"] == "merchant"
    assert c["merchant_id"] == world.merchant_a
    assert c["created_by"] == world.ma.user.id
    assert c["version"] == 1
    assert c["rules"]["kind"] == kind
    for field, value in RULES[kind].items():
        if not isinstance(value, list):
            assert c["rules"][field] == value
    async with db.unit_of_work() as s:
        account = await ledger.get_account(s, c["budget_account_id"])
    assert (account.owner_type, account.owner_id) == ("campaign", c["id"])
    assert account.asset == ASSETS[kind]
    assert account.balance == 0
    assert not account.allow_negative


async def test_operator_creates_platform_and_merchant_campaigns(
    client: httpx.AsyncClient, world: World
) -> None:
    platform = await create(client, world.op, kind="referral")
    assert (platform["owner_type"], platform["merchant_id"]) == ("operator", None)
    for_b = await create(client, world.op, merchant_id=world.merchant_b)
    assert (for_b["owner_type"], for_b["merchant_id"]) == ("merchant", world.merchant_b)
    # merchant B's staff manage it like their own
    r = await client.post(
        f"/api/v1/campaigns/{for_b['id']}/transitions",
        json={"to": "pending_review"},
        headers=world.mb.headers,
    )
    assert r.status_code == 200, r.text


BAD_RULES: list[tuple[str, dict[str, Any], str]] = [
    ("rebate", {**RULES["rebate"], "user_rebate_bp": 10_001}, "rules.user_rebate_bp"),
    ("rebate", {**RULES["rebate"], "max_rebate_fen": 1.5}, "rules.max_rebate_fen"),
    ("rebate", {**RULES["rebate"], "max_rebate_fen": "500"}, "rules.max_rebate_fen"),
    (
        "rebate",
        {k: v for k, v in RULES["rebate"].items() if k != "max_rebate_fen"},
        "rules.max_rebate_fen",
    ),
    ("rebate", {**RULES["rebate"], "bonus": 1}, "rules.bonus"),
    ("rebate", {**RULES["rebate"], "kind": "coupon"}, "rules.kind"),
    (
        "referral",
        {**RULES["referral"], "max_referrals_per_user": 0},
        "rules.max_referrals_per_user",
    ),
    ("reward", {**RULES["reward"], "rewards": []}, "rules.rewards"),
    (
        "reward",
        {"rewards": [{"code": "x", "type": "cash", "delivery": "ledger", "amount": 5, "stock": 1}]},
        "rules",  # cash pays CNY but the budget asset defaults to POINTS
    ),
    (
        "reward",
        {
            "rewards": [
                {"code": "x", "type": "points", "delivery": "message", "amount": 5, "stock": 1}
            ]
        },
        "rules.rewards.0",
    ),
    ("flash_sale", {**RULES["flash_sale"], "price_fen": -1}, "rules.price_fen"),
    ("flash_sale", {**RULES["flash_sale"], "total_stock": 4}, "rules"),
    ("coupon", {**RULES["coupon"], "face_value_fen": 0}, "rules.face_value_fen"),
]


@pytest.mark.parametrize(("kind", "rules", "field"), BAD_RULES)
async def test_invalid_rules_422_names_field_and_writes_nothing(
    db: Database,
    client: httpx.AsyncClient,
    world: World,
    kind: str,
    rules: dict[str, Any],
    field: str,
) -> None:
    r = await client.post(
        "/api/v1/campaigns", json=campaign_body(kind, rules=rules), headers=world.ma.headers
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"].endswith("/invalid-field")
    assert problem["errors"][0]["field"] == field
    assert await counts(db) == (0, 0, 0)


async def test_window_and_envelope_errors(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    now = datetime.now(UTC)
    backwards = campaign_body(
        starts_at=now.isoformat(), ends_at=(now - timedelta(seconds=1)).isoformat()
    )
    r = await client.post("/api/v1/campaigns", json=backwards, headers=world.ma.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "ends_at"
    naive = campaign_body(starts_at="2030-01-01T00:00:00")
    r = await client.post("/api/v1/campaigns", json=naive, headers=world.ma.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "starts_at"
    r = await client.post(
        "/api/v1/campaigns", json={**campaign_body(), "kind": "lottery"}, headers=world.ma.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "kind"
    r = await client.post(
        "/api/v1/campaigns",
        json=campaign_body(merchant_id="0" * 32),
        headers=world.op.headers,
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "merchant_id"
    assert await counts(db) == (0, 0, 0)


async def test_who_may_create(db: Database, client: httpx.AsyncClient, world: World) -> None:
    r = await client.post("/api/v1/campaigns", json=campaign_body(), headers=world.cust.headers)
    assert r.status_code == 403
    r = await client.post(
        "/api/v1/campaigns",
        json=campaign_body(merchant_id=world.merchant_b),
        headers=world.ma.headers,
    )
    assert r.status_code == 403
    r = await client.post("/api/v1/campaigns", json=campaign_body())
    assert r.status_code == 401
    assert await counts(db) == (0, 0, 0)


async def _stored(db: Database, campaign_id: str) -> tuple[dict[str, Any], Any, int]:
    """The campaign's row as stored, the row counts and the outbox size: what a refused edit
    must leave exactly as it was."""
    async with db.unit_of_work() as s:
        row = (
            await s.execute(
                select(Campaign.__table__).where(Campaign.__table__.c.id == campaign_id)
            )
        ).one()
        outbox = (await s.execute(select(func.count()).select_from(OutboxEvent))).scalar_one()
    return dict(row._mapping), await counts(db), int(outbox)


async def test_edit_draft_and_rejected_only(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await assisted_review(db, app)  # held for a person, so an operator can reject it
    c = await create(client, world.ma, kind="coupon")
    url = f"/api/v1/campaigns/{c['id']}"
    r = await client.patch(
        url,
        json={"name": "Spring coupons", "rules": {**RULES["coupon"], "quantity": 50}, "version": 1},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["name"] == "Spring coupons"
    assert edited["rules"]["quantity"] == 50
    assert edited["version"] == 2

    # stale version: nothing changes
    before = await _stored(db, c["id"])
    r = await client.patch(url, json={"name": "late", "version": 1}, headers=world.ma.headers)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/campaign-version-conflict")
    assert await _stored(db, c["id"]) == before

    # invalid rules on edit: named, nothing changes
    r = await client.patch(
        url, json={"rules": {**RULES["coupon"], "quantity": 0}}, headers=world.ma.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "rules.quantity"
    assert await _stored(db, c["id"]) == before
    r = await client.patch(url, json={"ends_at": "2000-01-01T00:00:00Z"}, headers=world.ma.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "ends_at"
    assert await _stored(db, c["id"]) == before
    assert (await client.get(url, headers=world.ma.headers)).json()["version"] == 2
    r = await client.patch(url, json={"name": None, "version": 2}, headers=world.ma.headers)
    assert r.status_code == 200
    assert r.json()["name"] == "Spring coupons"
    assert r.json()["version"] == 3

    await walk(client, world, c["id"], "pending_review")
    before = await _stored(db, c["id"])
    r = await client.patch(url, json={"name": "x"}, headers=world.ma.headers)
    assert r.status_code == 409
    assert r.json()["type"].endswith("/campaign-not-editable")
    assert await _stored(db, c["id"]) == before

    await walk(client, world, c["id"], "rejected")
    r = await client.patch(url, json={"description": "fixed"}, headers=world.ma.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "rejected"


async def test_edit_cannot_change_budget_asset(client: httpx.AsyncClient, world: World) -> None:
    c = await create(client, world.ma, kind="reward")
    cash = {
        "rewards": [{"code": "c", "type": "cash", "delivery": "ledger", "amount": 5, "stock": 1}],
        "budget_asset": "CNY",
    }
    r = await client.patch(
        f"/api/v1/campaigns/{c['id']}", json={"rules": cash}, headers=world.ma.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "rules.budget_asset"
