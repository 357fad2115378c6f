"""Join-code test world: the campaigns' world (two merchants with staff, an operator, a
customer), a rebate campaign, and helpers reading the tables from outside the app."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.auth.models import AuditEntry
from incentive.db import Database
from incentive.join_codes.models import CampaignMerchant, JoinCode
from tests.campaigns.conftest import World, create, world  # noqa: F401 (the fixture)
from tests.factories import Actor

_keys = itertools.count()


@pytest.fixture
async def campaign(client: httpx.AsyncClient, world: World) -> str:  # noqa: F811
    """A draft operator rebate campaign's id."""
    body = await create(client, world.op)
    campaign_id: str = body["id"]
    return campaign_id


async def generate(
    client: httpx.AsyncClient,
    actor: Actor,
    campaign_id: str,
    count: int,
    prefix: str | None = None,
    key: str | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"count": count}
    if prefix is not None:
        body["prefix"] = prefix
    return await client.post(
        f"/api/v1/campaigns/{campaign_id}/join-codes",
        json=body,
        headers={**actor.headers, "Idempotency-Key": key or f"gen-{next(_keys)}"},
    )


async def codes_of(db: Database, campaign_id: str) -> list[JoinCode]:
    async with db.unit_of_work() as s:
        rows = await s.execute(
            select(JoinCode).where(JoinCode.campaign_id == campaign_id).order_by(JoinCode.code)
        )
        return list(rows.scalars())


async def members_of(db: Database, campaign_id: str) -> list[CampaignMerchant]:
    async with db.unit_of_work() as s:
        rows = await s.execute(
            select(CampaignMerchant).where(CampaignMerchant.campaign_id == campaign_id)
        )
        return list(rows.scalars())


async def audited(db: Database, action: str) -> int:
    async with db.unit_of_work() as s:
        n = await s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
        )
        return int(n or 0)


async def redeem(client: httpx.AsyncClient, actor: Actor, code: str) -> httpx.Response:
    return await client.post(
        "/api/v1/join-codes/redemptions", json={"code": code}, headers=actor.headers
    )
