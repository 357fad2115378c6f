"""Campaign refusals as RFC 9457 bodies: the HTTP ``status`` stays, the campaign's status is
``campaign_status``, and the wording reads right."""

from __future__ import annotations

from typing import Any

import httpx

from incentive.db import Database
from tests.campaigns.conftest import World, assisted_review, create, move, walk


async def test_editing_an_active_campaign_names_its_status_apart(
    client: httpx.AsyncClient, world: World
) -> None:
    c = await create(client, world.ma)
    await walk(client, world, c["id"], "pending_review", "approved", "active")
    r = await client.patch(
        f"/api/v1/campaigns/{c['id']}", json={"name": "new"}, headers=world.ma.headers
    )
    assert r.status_code == 409
    body = r.json()
    assert body["status"] == 409
    assert body["campaign_status"] == "active"
    assert body["detail"].startswith("an active campaign cannot be edited")


async def test_rejecting_without_a_reason_says_so_plainly(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await assisted_review(db, app)
    c = await create(client, world.ma)
    await walk(client, world, c["id"], "pending_review")
    r = await move(client, world.op, c["id"], "rejected")
    assert r.status_code == 422
    assert r.json()["detail"] == "a reason is required to move a campaign to rejected"
