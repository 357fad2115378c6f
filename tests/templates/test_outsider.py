"""Found by an outside review (issue 15): routes a caller can reach with an odd but valid
body must answer 4xx or 2xx, never a 5xx."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from incentive.auth.models import AuditEntry
from incentive.db import Database
from tests.campaigns.conftest import World
from tests.templates.test_templates import template


async def _audits(db: Database) -> list[str]:
    async with db.unit_of_work() as s:
        found = await s.scalars(
            select(AuditEntry.action).where(AuditEntry.action == "template.edit")
        )
        return list(found)


async def test_an_empty_patch_changes_nothing_and_is_no_5xx(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    draft = await template(client, world.op, publish=False)
    url = f"/api/v1/templates/shop/versions/{draft['version']}"
    for body in ({}, {"name": None, "description": None, "fields": None}):
        r = await client.patch(url, json=body, headers=world.op.headers)
        assert r.status_code == 200, r.text
        assert r.json() == draft
    assert await _audits(db) == []
    # Published: still 409 (it never changes), not a 5xx.
    r = await client.post(f"{url}/publish", headers=world.op.headers)
    assert r.status_code == 200, r.text
    r = await client.patch(url, json={}, headers=world.op.headers)
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/template-published")
