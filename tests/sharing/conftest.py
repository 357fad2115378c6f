"""Sharing test world: the campaigns' world (merchants A and B with staff, an operator, a
customer), a shared rebate campaign of merchant A whose sharers get coupons of merchant A's
coupon campaign, a partner sending activities, and readers of the tables from outside."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.auth import service as auth_service
from incentive.coupons.models import Coupon
from incentive.db import Database
from tests.activities.conftest import REBATE, Sender
from tests.campaigns.conftest import World, create, walk
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)
from tests.coupons.conftest import coupon_campaign
from tests.factories import Actor

H = "/api/v1"
_keys = itertools.count()


@pytest.fixture
async def sender(db: Database) -> Sender:
    async with db.unit_of_work() as s:
        partner, key = await auth_service.create_partner(s, "PAYAPP", "Pay app")
    return Sender(partner.id, key)


async def draft(client: httpx.AsyncClient, world: World) -> dict[str, Any]:
    """A draft rebate campaign of merchant A."""
    return await create(client, world.ma, rules=REBATE)


async def put_sharing(
    client: httpx.AsyncClient, actor: Actor, campaign_id: str, **body: Any
) -> httpx.Response:
    return await client.put(
        f"{H}/campaigns/{campaign_id}/sharing", json=body, headers=actor.headers
    )


async def shared_campaign(
    client: httpx.AsyncClient,
    world: World,
    *,
    quantity: int = 100,
    batch_limit: int = 5,
    coupons: bool = True,
    **settings: Any,
) -> tuple[dict[str, Any], str | None]:
    """An active rebate campaign of merchant A with sharing enabled, and the batch (of an
    active coupon campaign of merchant A) its sharers get coupons of."""
    batch = None
    if coupons:
        _, batch = await coupon_campaign(
            client, world, quantity=quantity, per_user_limit=batch_limit
        )
    campaign = await draft(client, world)
    r = await put_sharing(
        client, world.ma, campaign["id"], enabled=True, coupon_batch_id=batch, **settings
    )
    assert r.status_code == 200, r.text
    await walk(client, world, campaign["id"], "pending_review", "approved", "active")
    return campaign, batch


async def share(
    client: httpx.AsyncClient,
    actor: Actor,
    campaign_id: str,
    channel: str = "wechat",
    key: str | None = None,
) -> httpx.Response:
    return await client.post(
        f"{H}/campaigns/{campaign_id}/shares",
        json={"channel": channel},
        headers={**actor.headers, "Idempotency-Key": key or f"share-{next(_keys)}"},
    )


async def shared(client: httpx.AsyncClient, actor: Actor, campaign_id: str) -> dict[str, Any]:
    r = await share(client, actor, campaign_id)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def visit(
    client: httpx.AsyncClient, token: str, actor: Actor | None = None, **headers: str
) -> httpx.Response:
    if actor is not None:
        headers = {**actor.headers, **headers}
    return await client.get(f"/s/{token}", headers=headers, follow_redirects=False)


async def pay(
    client: httpx.AsyncClient,
    sender: Sender,
    customer: Actor,
    merchant: str,
    *,
    occurred_at: datetime | None = None,
    type: str = "payment",
    **attributes: Any,
) -> httpx.Response:
    body: dict[str, Any] = {
        "id": f"act-{next(_keys)}",
        "type": type,
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "customer": customer.user.id,
        "attributes": attributes,
    }
    if type == "payment":
        body.update(merchant=merchant, amount_fen=5_000)
    r = await client.post(f"{H}/activities", json=body, headers=sender.headers)
    assert r.status_code in (201, 202), r.text
    return r


async def rows(db: Database, model: Any, **where: Any) -> list[Any]:
    async with db.unit_of_work() as s:
        stmt = select(model)
        for name, value in where.items():
            stmt = stmt.where(getattr(model, name) == value)
        return list(await s.scalars(stmt))


async def count(db: Database, model: Any) -> int:
    async with db.unit_of_work() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def coupons_of(db: Database, batch_id: str, customer_id: str) -> list[Coupon]:
    return await rows(db, Coupon, batch_id=batch_id, customer_id=customer_id)
