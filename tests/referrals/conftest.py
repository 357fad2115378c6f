"""Referral test world: the campaigns' world (merchants A and B with staff, an operator, a
customer), an active platform referral campaign, sign-up switched on through live config,
and helpers to invite, sign up, accept and read the tables from outside."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from incentive.auth.models import User
from incentive.config import service as config_service
from incentive.db import Database
from tests.campaigns.conftest import RULES, World, create, walk
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)
from tests.factories import Actor, make_user

H = "/api/v1"
_keys = itertools.count()
_names = itertools.count()


async def set_config(db: Database, app: Any, name: str, value: Any) -> None:
    async with db.unit_of_work() as s:
        await config_service.set_value(s, name, value, actor="test")
    await app.state.config.reload()


async def referral_campaign(
    client: httpx.AsyncClient, world: World, **rules: Any
) -> dict[str, Any]:
    """An active platform referral campaign with the sample rules and ``rules`` over them."""
    campaign = await create(client, world.op, kind="referral", rules={**RULES["referral"], **rules})
    await walk(
        client, world, campaign["id"], "pending_review", "approved", "active", owner=world.op
    )
    return campaign


async def invite(
    client: httpx.AsyncClient, actor: Actor, campaign_id: str, key: str | None = None, **body: Any
) -> httpx.Response:
    return await client.post(
        f"{H}/campaigns/{campaign_id}/invites",
        json=body,
        headers={**actor.headers, "Idempotency-Key": key or f"invite-{next(_keys)}"},
    )


async def invited(
    client: httpx.AsyncClient, actor: Actor, campaign_id: str, **body: Any
) -> dict[str, Any]:
    r = await invite(client, actor, campaign_id, **body)
    assert r.status_code == 201, r.text
    found: dict[str, Any] = r.json()
    return found


async def customer(db: Database, app: Any, name: str | None = None) -> Actor:
    """A new customer (an account made now: after any invite made before)."""
    return await make_user(db, app, username=name or f"new{next(_names)}")


async def accept(
    client: httpx.AsyncClient, actor: Actor, token: str, **body: Any
) -> httpx.Response:
    return await client.post(f"{H}/invites/{token}/acceptance", json=body, headers=actor.headers)


async def accepted(client: httpx.AsyncClient, actor: Actor, token: str, **body: Any) -> Any:
    r = await accept(client, actor, token, **body)
    assert r.status_code == 200, r.text
    return r.json()


async def signup(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("username", f"signup{next(_names)}")
    body.setdefault("password", "correct horse battery")
    return await client.post(f"{H}/auth/signup", json=body)


@pytest.fixture
async def signups_on(db: Database, app: Any) -> None:
    await set_config(db, app, "auth.signup_enabled", True)
    await set_config(db, app, "auth.signup_max_per_address", 1000)


async def backdate(db: Database, user_id: str, days: int) -> None:
    async with db.unit_of_work() as s:
        created = await s.scalar(select(User.created_at).where(User.id == user_id))
        assert created is not None
        await s.execute(
            update(User).where(User.id == user_id).values(created_at=created - timedelta(days=days))
        )


async def count(db: Database, model: Any, **where: Any) -> int:
    async with db.unit_of_work() as s:
        stmt = select(func.count()).select_from(model)
        for name, value in where.items():
            stmt = stmt.where(getattr(model, name) == value)
        return int(await s.scalar(stmt) or 0)


async def mine(client: httpx.AsyncClient, actor: Actor) -> list[dict[str, Any]]:
    r = await client.get(f"{H}/me/referrals", headers=actor.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def funded_campaign(
    client: httpx.AsyncClient, db: Database, world: World, *, budget: int, **rules: Any
) -> dict[str, Any]:
    """An active platform referral campaign whose budget holds ``budget`` (points or fen)."""
    from tests.activities.conftest import funding_account

    campaign = await referral_campaign(client, world, **rules)
    asset = rules.get("budget_asset", "POINTS")
    if budget:
        r = await client.post(
            f"{H}/campaigns/{campaign['id']}/budget",
            json={"amount": budget, "from_account_id": await funding_account(db, asset)},
            headers={**world.op.headers, "Idempotency-Key": f"fund-{campaign['id']}"},
        )
        assert r.status_code == 201, r.text
    return campaign


async def referee_of(
    client: httpx.AsyncClient, db: Database, app: Any, referrer: Actor, campaign_id: str
) -> Actor:
    """A new customer who accepted ``referrer``'s new invite for the campaign."""
    token = (await invited(client, referrer, campaign_id))["token"]
    referee = await customer(db, app)
    body = await accepted(client, referee, token)
    assert body["state"] == "accepted", body
    return referee
