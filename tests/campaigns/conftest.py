"""Campaign test world: two merchants with staff, an operator, a customer, and rules samples."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.campaigns.models import Campaign, CampaignTransition
from incentive.db import Database
from incentive.events.models import OutboxEvent
from incentive.ledger.models import Account
from tests.factories import Actor, make_merchant, make_user

RULES: dict[str, dict[str, Any]] = {
    "rebate": {
        "user_rebate_bp": 200,
        "merchant_rebate_bp": 50,
        "min_payment_fen": 1000,
        "max_rebate_fen": 500,
    },
    "referral": {
        "referrer_reward_points": 100,
        "referee_reward_points": 20,
        "max_referrals_per_user": 10,
    },
    "reward": {
        "rewards": [
            {"code": "pts100", "type": "points", "delivery": "ledger", "amount": 100, "stock": 5},
            {
                "code": "thanks",
                "type": "benefit",
                "delivery": "message",
                "message": "Thank you: a free drink on your next visit.",
                "stock": 100,
            },
        ],
        "per_user_limit": 1,
    },
    "flash_sale": {
        "sku": "SKU-1",
        "item_name": "Tea",
        "price_fen": 990,
        "total_stock": 1000,
        "per_user_limit": 2,
        "buckets": 8,
    },
    "coupon": {"face_value_fen": 500, "quantity": 1000, "per_user_limit": 1},
}
ASSETS = {
    "rebate": "CNY",
    "referral": "POINTS",
    "reward": "POINTS",
    "flash_sale": "CNY",
    "coupon": "CNY",
}


@dataclass
class World:
    op: Actor
    ma: Actor  # staff of merchant A
    mb: Actor  # staff of merchant B
    cust: Actor
    merchant_a: str
    merchant_b: str


@pytest.fixture
async def world(db: Database, app: Any) -> World:
    a = await make_merchant(db, code="A")
    b = await make_merchant(db, code="B")
    return World(
        op=await make_user(db, app, username="op", role="operator"),
        ma=await make_user(db, app, username="ma", role="merchant", merchant_id=a.id),
        mb=await make_user(db, app, username="mb", role="merchant", merchant_id=b.id),
        cust=await make_user(db, app, username="cust"),
        merchant_a=a.id,
        merchant_b=b.id,
    )


def campaign_body(kind: str = "rebate", **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "kind": kind,
        "name": f"{kind} campaign",
        "description": "test",
        "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(days=7)).isoformat(),
        "rules": RULES[kind],
    }
    body.update(overrides)
    return body


async def create(client: httpx.AsyncClient, actor: Actor, **overrides: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/campaigns", json=campaign_body(**overrides), headers=actor.headers
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def move(
    client: httpx.AsyncClient, actor: Actor, campaign_id: str, to: str, reason: str = ""
) -> httpx.Response:
    return await client.post(
        f"/api/v1/campaigns/{campaign_id}/transitions",
        json={"to": to, "reason": reason},
        headers=actor.headers,
    )


async def walk(
    client: httpx.AsyncClient,
    world: World,
    campaign_id: str,
    *statuses: str,
    owner: Actor | None = None,
) -> None:
    """Move a campaign through ``statuses``: reviews by the operator, the rest by ``owner``
    (merchant A's staff by default). A status the campaign reached by itself is passed (the
    automated review approves a clean submission)."""
    reached = None
    for to in statuses:
        if to == reached:
            continue
        actor = world.op if to in ("approved", "rejected") else (owner or world.ma)
        r = await move(client, actor, campaign_id, to, reason="ok")
        assert r.status_code == 200, r.text
        reached = r.json()["status"]


async def assisted_review(db: Database, app: Any) -> None:
    """Every submission waits for an operator (``review.mode = assisted``)."""
    from incentive.config import service as config_service

    async with db.unit_of_work() as s:
        await config_service.set_value(s, "review.mode", "assisted", actor="test")
    await app.state.config.reload()


async def counts(db: Database) -> tuple[int, int, int]:
    async with db.unit_of_work() as s:
        n_campaigns = (await s.execute(select(func.count()).select_from(Campaign))).scalar_one()
        n_accounts = (
            await s.execute(
                select(func.count()).select_from(Account).where(Account.owner_type == "campaign")
            )
        ).scalar_one()
        n_transitions = (
            await s.execute(select(func.count()).select_from(CampaignTransition))
        ).scalar_one()
    return int(n_campaigns), int(n_accounts), int(n_transitions)


async def announced(db: Database, campaign_id: str) -> list[tuple[str | None, str]]:
    """(from, to) of every ``campaign.status_changed`` event in the outbox, in order."""
    async with db.unit_of_work() as s:
        rows = await s.execute(
            select(OutboxEvent.payload)
            .where(OutboxEvent.topic == "campaign.status_changed", OutboxEvent.key == campaign_id)
            .order_by(OutboxEvent.id)
        )
        return [(p["from"], p["to"]) for p in rows.scalars()]
