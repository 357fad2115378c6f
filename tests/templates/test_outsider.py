"""Found by an outside review (issue 15): routes a caller can reach with an odd but valid
body must answer 4xx or 2xx, never a 5xx."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from incentive.auth.models import AuditEntry
from incentive.db import Database
from tests.campaigns.conftest import World, campaign_body
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


async def test_a_field_no_value_can_satisfy_is_refused_when_the_template_is_made(
    client: httpx.AsyncClient, world: World
) -> None:
    """A choice field without choices (every campaign from it was a 500) and a text field
    whose min_length is above its (default) max_length (none could be made): 422 naming
    the field, when the template is drafted."""
    for field in (
        {"name": "tier", "label": "Tier", "type": "choice", "choices": []},
        {"name": "title", "label": "Title", "type": "text", "min_length": 201},
        {"name": "items", "label": "Items", "type": "text_list", "min_length": 201},
        {"name": "body", "label": "Body", "type": "prose", "min_length": 5000, "max_length": 4999},
    ):
        r = await client.post(
            "/api/v1/templates",
            json={"key": "odd", "kind": "rebate", "name": "Odd", "fields": [field]},
            headers=world.op.headers,
        )
        assert r.status_code == 422, (field, r.text)
        assert r.json()["errors"][0]["field"].startswith("fields.0"), r.text
    made = await template(
        client,
        world.op,
        fields=[
            {"name": "tier", "label": "Tier", "type": "choice", "choices": ["gold"]},
            {"name": "title", "label": "Title", "type": "text", "min_length": 200},
        ],
    )
    r = await client.post(
        "/api/v1/campaigns",
        json=campaign_body(
            "rebate", template={"key": "shop"}, content={"tier": "gold", "title": "t" * 200}
        ),
        headers=world.ma.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["template_version"] == made["version"]


async def test_an_image_default_is_stored_as_a_given_image_would_be(
    client: httpx.AsyncClient, world: World
) -> None:
    """An image field's default was kept as the raw JSON (no caption, the URL as typed) and
    serialising it warned (an error under the suite's warning filter)."""
    await template(
        client,
        world.op,
        fields=[
            {
                "name": "banner",
                "label": "Banner",
                "type": "image",
                "reviewed": True,
                "default": {"url": "https://cdn.example"},
            }
        ],
    )
    given = {"banner": {"url": "https://cdn.example"}}
    made = []
    for content in ({}, given):
        r = await client.post(
            "/api/v1/campaigns",
            json=campaign_body("rebate", template={"key": "shop"}, content=content),
            headers=world.ma.headers,
        )
        assert r.status_code == 201, r.text
        made.append(r.json()["content"])
    assert made[0] == made[1] == {"banner": {"url": "https://cdn.example/", "caption": ""}}
