"""Issue 15: operators define versioned templates; merchants make campaigns from a published
version, a value that breaks it is a 422 naming the field and the rule, a published version
never changes and a campaign keeps the version it was made from."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.campaigns.models import Campaign
from incentive.db import Database
from tests.campaigns.conftest import World, campaign_body
from tests.factories import Actor
from tests.review.conftest import word_list

SHOP_FIELDS: list[dict[str, Any]] = [
    {
        "name": "title",
        "label": "Title",
        "type": "text",
        "required": True,
        "reviewed": True,
        "max_length": 30,
    },
    {"name": "shop_info", "label": "Shop", "type": "prose", "reviewed": True, "max_length": 500},
    {
        "name": "staff",
        "label": "Staff on duty",
        "type": "text_list",
        "reviewed": True,
        "max_items": 3,
    },
    {"name": "hot_items", "label": "Hot items", "type": "text_list", "reviewed": True},
    {"name": "banner", "label": "Banner", "type": "image", "reviewed": True},
    {"name": "internal_note", "label": "Note (not shown)", "type": "text"},
    {
        "name": "tables",
        "label": "Tables",
        "type": "integer",
        "minimum": 1,
        "maximum": 50,
        "default": 10,
    },
    {"name": "tier", "label": "Tier", "type": "choice", "choices": ["gold", "silver"]},
    {"name": "deposit_fen", "label": "Deposit", "type": "fen", "maximum": 100_000},
    {"name": "open_late", "label": "Open late", "type": "boolean", "default": False},
]


async def template(
    client: httpx.AsyncClient,
    op: Actor,
    *,
    fields: list[dict[str, Any]] | None = None,
    publish: bool = True,
    kind: str = "rebate",
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/templates",
        json={
            "key": "shop",
            "kind": kind,
            "name": "Shop campaign",
            "fields": fields or SHOP_FIELDS,
        },
        headers=op.headers,
    )
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    if publish:
        r = await client.post(
            f"/api/v1/templates/shop/versions/{made['version']}/publish", headers=op.headers
        )
        assert r.status_code == 200, r.text
        made = r.json()
    return made


GOOD = {
    "title": "Spring tea",
    "shop_info": "12 Tea Street, open 9–21",
    "staff": ["Wang Li", "Chen Yu"],
    "hot_items": ["Longjing", "Pu'er"],
    "banner": {"url": "https://cdn.example/banner.png", "caption": "Fresh leaves"},
    "tier": "gold",
}


def _from_template(content: Any, version: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"key": "shop"}
    if version is not None:
        ref["version"] = version
    return campaign_body("rebate", template=ref, content=content)


async def _count(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int(await s.scalar(select(func.count()).select_from(Campaign)) or 0)


async def test_a_campaign_from_a_published_template_keeps_its_content_and_version(
    client: httpx.AsyncClient, world: World
) -> None:
    made = await template(client, world.op)
    assert (made["status"], made["version"]) == ("published", 1)
    r = await client.post("/api/v1/campaigns", json=_from_template(GOOD), headers=world.ma.headers)
    assert r.status_code == 201, r.text
    c = r.json()
    assert (c["template_key"], c["template_version"]) == ("shop", 1)
    assert c["content"] == {**GOOD, "tables": 10, "open_late": False}
    # the campaign page carries the shop, staff and hot items, for customers once it runs
    r = await client.get(f"/api/v1/campaigns/{c['id']}", headers=world.ma.headers)
    assert r.json()["content"]["staff"] == ["Wang Li", "Chen Yu"]


@pytest.mark.parametrize(
    ("content", "field", "rule"),
    [
        ({**GOOD, "title": None}, "content.title", "string_type"),
        ({k: v for k, v in GOOD.items() if k != "title"}, "content.title", "missing"),
        ({**GOOD, "title": "x" * 31}, "content.title", "string_too_long"),
        ({**GOOD, "staff": ["a", "b", "c", "d"]}, "content.staff", "too_long"),
        ({**GOOD, "staff": ["ok", 7]}, "content.staff.1", "string_type"),
        ({**GOOD, "tables": 51}, "content.tables", "less_than_equal"),
        ({**GOOD, "tables": "5"}, "content.tables", "int_type"),
        ({**GOOD, "tier": "bronze"}, "content.tier", "literal_error"),
        ({**GOOD, "deposit_fen": -1}, "content.deposit_fen", "greater_than_equal"),
        ({**GOOD, "open_late": "yes"}, "content.open_late", "bool_type"),
        ({**GOOD, "banner": {"url": "not a url"}}, "content.banner.url", "url_parsing"),
        ({**GOOD, "colour": "red"}, "content.colour", "unknown-field"),
        ({**GOOD, "title": "tab\u0000"}, "content.title", "control_character"),
    ],
)
async def test_a_value_that_breaks_the_template_is_a_422_naming_field_and_rule(
    db: Database, client: httpx.AsyncClient, world: World, content: Any, field: str, rule: str
) -> None:
    await template(client, world.op)
    before = await _count(db)
    r = await client.post(
        "/api/v1/campaigns", json=_from_template(content), headers=world.ma.headers
    )
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert (error["field"], error["rule"]) == (field, rule), r.text
    assert await _count(db) == before


async def test_a_published_version_never_changes_and_campaigns_keep_theirs(
    client: httpx.AsyncClient, world: World
) -> None:
    await template(client, world.op)
    r = await client.post("/api/v1/campaigns", json=_from_template(GOOD), headers=world.ma.headers)
    old = r.json()
    r = await client.patch(
        "/api/v1/templates/shop/versions/1", json={"name": "Renamed"}, headers=world.op.headers
    )
    assert r.status_code == 409
    assert r.json()["type"].endswith("/template-published")
    # version 2: the title becomes optional, a new required field appears
    v2_fields = [{**SHOP_FIELDS[0], "required": False}, *SHOP_FIELDS[1:]]
    v2_fields.append({"name": "wifi", "label": "Wi-Fi", "type": "boolean", "required": True})
    made = await template(client, world.op, fields=v2_fields, publish=False)
    assert (made["version"], made["status"]) == (2, "draft")
    # merchants see published versions only
    r = await client.get("/api/v1/templates/shop/versions/2", headers=world.ma.headers)
    assert r.status_code == 404
    await client.post("/api/v1/templates/shop/versions/2/publish", headers=world.op.headers)
    r = await client.post(
        "/api/v1/campaigns", json=_from_template({"wifi": True}), headers=world.ma.headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["template_version"] == 2
    # the old campaign is still checked against version 1: the title stays required
    r = await client.patch(
        f"/api/v1/campaigns/{old['id']}",
        json={"content": {"shop_info": "moved"}},
        headers=world.ma.headers,
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "content.title"
    r = await client.patch(
        f"/api/v1/campaigns/{old['id']}",
        json={"content": {**GOOD, "shop_info": "moved"}},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["template_version"] == 1
    # a version asked for by number; a retired one makes no more campaigns
    r = await client.post(
        "/api/v1/campaigns", json=_from_template(GOOD, version=1), headers=world.ma.headers
    )
    assert r.status_code == 201
    await client.post("/api/v1/templates/shop/versions/1/retire", headers=world.op.headers)
    r = await client.post(
        "/api/v1/campaigns", json=_from_template(GOOD, version=1), headers=world.ma.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "template"


async def test_template_and_kind_must_agree_and_content_needs_a_template(
    client: httpx.AsyncClient, world: World
) -> None:
    await template(client, world.op, kind="coupon")
    r = await client.post("/api/v1/campaigns", json=_from_template(GOOD), headers=world.ma.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "template"
    r = await client.post(
        "/api/v1/campaigns", json=campaign_body(content={"title": "x"}), headers=world.ma.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "content"


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ({"name": "n", "label": "N", "type": "integer", "reviewed": True}, "fields.0"),
        ({"name": "n", "label": "N", "type": "integer", "default": "x"}, "fields.0"),
        ({"name": "n", "label": "N", "type": "text", "minimum": 1}, "fields.0"),
        ({"name": "n", "label": "N", "type": "choice"}, "fields.0"),
        ({"name": "N!", "label": "N", "type": "text"}, "fields.0.name"),
        ({"name": "n", "label": "N", "type": "colour"}, "fields.0.type"),
    ],
)
async def test_a_bad_template_is_refused_naming_the_field(
    client: httpx.AsyncClient, world: World, field: dict[str, Any], where: str
) -> None:
    r = await client.post(
        "/api/v1/templates",
        json={"key": "bad", "kind": "rebate", "name": "Bad", "fields": [field]},
        headers=world.op.headers,
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"].startswith(where), r.text


async def test_only_operators_define_templates(client: httpx.AsyncClient, world: World) -> None:
    body = {"key": "shop", "kind": "rebate", "name": "Shop", "fields": SHOP_FIELDS}
    r = await client.post("/api/v1/templates", json=body, headers=world.ma.headers)
    assert r.status_code == 403
    await template(client, world.op, publish=False)
    for actor in (world.ma, world.cust):
        listed = await client.get("/api/v1/templates", headers=actor.headers)
        assert listed.json()["items"] == []
        r = await client.post("/api/v1/templates/shop/versions/1/publish", headers=actor.headers)
        assert r.status_code == 403


async def test_reviewed_fields_are_screened_and_the_others_are_not(
    app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "banned", ["casino"])
    await template(client, world.op)
    content = {
        **GOOD,
        "internal_note": "casino",  # not shown to customers: not reviewed
        "hot_items": ["Longjing", "Casino chips"],
        "banner": {"url": "https://cdn.example/b.png", "caption": "C-A-S-I-N-O"},
    }
    r = await client.post(
        "/api/v1/campaigns", json=_from_template(content), headers=world.ma.headers
    )
    c = r.json()
    r = await client.post(
        f"/api/v1/campaigns/{c['id']}/transitions",
        json={"to": "pending_review"},
        headers=world.ma.headers,
    )
    assert r.json()["status"] == "rejected"
    verdict = (
        await client.get(f"/api/v1/campaigns/{c['id']}/review", headers=world.ma.headers)
    ).json()["items"][0]
    assert [(h["field"], h["matched"]) for h in verdict["hits"]] == [
        ("content.hot_items.1", "Casino"),
        ("content.banner.caption", "C-A-S-I-N-O"),
    ]


async def test_customers_see_the_reviewed_content_only(
    client: httpx.AsyncClient, world: World
) -> None:
    await template(client, world.op)
    content = {**GOOD, "internal_note": "ask Wang about the rent", "tables": 12}
    r = await client.post(
        "/api/v1/campaigns", json=_from_template(content), headers=world.ma.headers
    )
    cid = r.json()["id"]
    for to in ("pending_review", "active"):  # the automated review approves it
        r = await client.post(
            f"/api/v1/campaigns/{cid}/transitions", json={"to": to}, headers=world.ma.headers
        )
        assert r.status_code == 200, r.text
    seen = (await client.get(f"/api/v1/campaigns/{cid}", headers=world.cust.headers)).json()
    assert "internal_note" not in seen["content"]
    assert seen["content"]["staff"] == GOOD["staff"]
    assert seen["content"]["tables"] == 12  # not text: shown
    listed = await client.get(
        "/api/v1/campaigns", params={"merchant": world.merchant_a}, headers=world.cust.headers
    )
    assert [c["content"].get("internal_note") for c in listed.json()["items"]] == [None]
    own = (await client.get(f"/api/v1/campaigns/{cid}", headers=world.ma.headers)).json()
    assert own["content"]["internal_note"] == "ask Wang about the rent"
