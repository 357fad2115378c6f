"""Coupon test world: the campaigns' world (merchants A and B with staff, an operator, a
customer), coupon campaigns of merchant A, customers to claim, and readers of the tables
from outside the app."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import select

from incentive.coupons.models import Coupon, CouponBatch, CouponTransition
from incentive.db import Database
from tests.campaigns.conftest import World, create, walk
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)
from tests.factories import Actor, make_user

_keys = itertools.count()


async def coupon_campaign(
    client: httpx.AsyncClient, world: World, *, owner: str = "merchant", **rules: Any
) -> tuple[dict[str, Any], str]:
    """An active coupon campaign (merchant A's, or the platform's) and its batch id."""
    actor = world.ma if owner == "merchant" else world.op
    body = {"face_value_fen": 500, "quantity": 100, "per_user_limit": 1, **rules}
    campaign = await create(client, actor, kind="coupon", rules=body)
    await walk(client, world, campaign["id"], "pending_review", "approved", "active", owner=actor)
    r = await client.get(
        "/api/v1/coupon-batches",
        params={"campaign_id": campaign["id"]},
        headers=world.op.headers,
    )
    assert r.status_code == 200, r.text
    (batch,) = r.json()["items"]
    return campaign, batch["id"]


async def customers(db: Database, app: Any, n: int, prefix: str = "c") -> list[Actor]:
    return [await make_user(db, app, username=f"{prefix}{i}") for i in range(n)]


async def claim(
    client: httpx.AsyncClient, actor: Actor, batch_id: str, key: str | None = None
) -> httpx.Response:
    return await client.post(
        f"/api/v1/coupon-batches/{batch_id}/claims",
        headers={**actor.headers, "Idempotency-Key": key or f"claim-{next(_keys)}"},
    )


async def coupons_of(db: Database, batch_id: str) -> list[Coupon]:
    async with db.unit_of_work() as s:
        return list(
            await s.scalars(select(Coupon).where(Coupon.batch_id == batch_id).order_by(Coupon.id))
        )


async def states(db: Database, batch_id: str) -> Counter[str]:
    return Counter(c.state for c in await coupons_of(db, batch_id))


async def batch_row(db: Database, batch_id: str) -> CouponBatch:
    async with db.unit_of_work() as s:
        batch = await s.get(CouponBatch, batch_id)
        assert batch is not None
        return batch


async def history(db: Database, coupon_id: str) -> list[tuple[str | None, str]]:
    async with db.unit_of_work() as s:
        rows = await s.scalars(
            select(CouponTransition)
            .where(CouponTransition.coupon_id == coupon_id)
            .order_by(CouponTransition.id)
        )
        return [(t.from_state, t.to_state) for t in rows]
