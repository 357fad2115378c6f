"""Issue 17: data models defined field by field over a source (checked, 422 naming the field
and the rule, nothing written), versioned (a change of fields is the next version; an old
version still assembles its records), read by id by operators and the partners a model lists,
and archived as canonical JSON with its hash (an unchanged record is not rewritten)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.auth import service as auth_service
from incentive.auth.models import AuditEntry
from incentive.data_models import service
from incentive.data_models.models import ArchivedRecord, DataModel, DataModelVersion
from incentive.db import Database
from tests.activities.conftest import Sender
from tests.campaigns.conftest import World, create

H = "/api/v1"

FIELDS: list[dict[str, Any]] = [
    {"key": "id", "module_type": "string", "target_system": "crm", "mapped_field": "campaign_id"},
    {
        "key": "name",
        "module_type": "string",
        "target_system": "crm",
        "mapped_field": "title",
        "rule": {"type": "concatenate", "fields": ["kind"], "separator": " / "},
    },
    {
        "key": "starts_at",
        "module_type": "datetime",
        "target_system": "crm",
        "mapped_field": "start_date",
        "rule": {"type": "date_format", "format": "%Y-%m-%d", "time_zone": "Asia/Shanghai"},
    },
    {
        "key": "kind",
        "module_type": "string",
        "target_system": "bi",
        "mapped_field": "kind_code",
        "rule": {"type": "enum_map", "mapping": {"rebate": "RB", "coupon": "CP"}, "strict": True},
    },
    {"key": "status", "module_type": "string", "target_system": "bi", "mapped_field": "status"},
]


def model_body(**over: Any) -> dict[str, Any]:
    return {
        "id": "campaign-summary",
        "name": "Campaign summary",
        "source": "campaign",
        "fields": FIELDS,
        "partners": ["BANK"],
        **over,
    }


@pytest.fixture
async def bank(db: Database) -> Sender:
    async with db.unit_of_work() as s:
        made, key = await auth_service.create_partner(s, "BANK", "Bank")
    return Sender(made.id, key)


async def models_written(db: Database) -> tuple[int, int]:
    async with db.unit_of_work() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(DataModel)) or 0),
            int(await s.scalar(select(func.count()).select_from(DataModelVersion)) or 0),
        )


async def test_a_model_is_defined_versioned_and_audited(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    r = await client.post(f"{H}/data-models", json=model_body(), headers=world.op.headers)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["version"], made["systems"], made["partners"]) == (1, ["bi", "crm"], ["BANK"])
    again = await client.post(f"{H}/data-models", json=model_body(), headers=world.op.headers)
    assert (again.status_code, again.json()["type"].rsplit("/", 1)[-1]) == (
        409,
        "data-model-exists",
    )
    url = f"{H}/data-models/campaign-summary"
    renamed = await client.patch(url, json={"name": "Summary"}, headers=world.op.headers)
    assert (renamed.json()["version"], renamed.json()["name"]) == (1, "Summary")
    same = await client.patch(
        url, json={"source": "campaign", "fields": FIELDS}, headers=world.op.headers
    )
    assert same.json()["version"] == 1  # the same fields make no version
    fewer = await client.patch(
        url, json={"source": "campaign", "fields": FIELDS[:2]}, headers=world.op.headers
    )
    assert (fewer.json()["version"], fewer.json()["systems"]) == (2, ["crm"])
    versions = (await client.get(f"{url}/versions", headers=world.op.headers)).json()["items"]
    assert [(v["version"], len(v["fields"])) for v in versions] == [(2, 2), (1, 5)]
    async with db.unit_of_work() as s:
        actions = list(
            await s.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.action.startswith("data_model."))
                .order_by(AuditEntry.id)
            )
        )
    assert actions == ["data_model.create", "data_model.change", "data_model.change"]
    for actor in (world.ma, world.cust):
        assert (await client.get(url, headers=actor.headers)).status_code == 403


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"source": "nothing"}, "source", "registered"),
    ({"id": "Bad Id"}, "id", ""),
    ({"fields": [{**FIELDS[0], "key": "nope"}]}, "fields.0.key", "source-field"),
    (
        {"fields": [{**FIELDS[0], "module_type": "integer"}]},
        "fields.0.module_type",
        "matches-source",
    ),
    ({"fields": [FIELDS[0], FIELDS[0]]}, "fields.1.mapped_field", "unique"),
    ({"fields": [{**FIELDS[0], "rule": {"type": "fen_to_yuan"}}]}, "fields.0.rule", "takes-type"),
    (
        {"fields": [{**FIELDS[1], "rule": {"type": "concatenate", "fields": ["nope"]}}]},
        "fields.0.rule.fields.0",
        "source-field",
    ),
    (
        {"fields": [{**FIELDS[0], "rule": {"type": "lookup", "source": "nope", "field": "x"}}]},
        "fields.0.rule.source",
        "registered",
    ),
    (
        {"fields": [{**FIELDS[2], "rule": {"type": "date_format", "format": "%c"}}]},
        "fields.0.rule.date_format.format",
        "",
    ),
    (
        {"fields": [{**FIELDS[2], "rule": {"type": "date_format", "time_zone": "Mars/Base"}}]},
        "fields.0.rule.date_format.time_zone",
        "",
    ),
    (
        {"fields": [{**FIELDS[0], "rule": {"type": "mask", "keep_end": 99}}]},
        "fields.0.rule.mask.keep_end",
        "",
    ),
    (
        {"fields": [{**FIELDS[0], "rule": {"type": "rename", "extra": 1}}]},
        "fields.0.rule.rename.extra",
        "",
    ),
    ({"fields": [{**FIELDS[0], "target_system": "Bad System"}]}, "fields.0.target_system", ""),
]


@pytest.mark.parametrize(("change", "field", "rule"), BAD)
async def test_a_bad_definition_is_a_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient,
    world: World,
    db: Database,
    change: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    r = await client.post(f"{H}/data-models", json=model_body(**change), headers=world.op.headers)
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert error["field"] == field, r.json()
    if rule:
        assert error["rule"] == rule
    assert await models_written(db) == (0, 0)


async def records(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[Any]:
    found: list[Any] = []
    cursor = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get(
            f"{H}/data-models/campaign-summary/records", params=query, headers=headers
        )
        assert r.status_code == 200, r.text
        found += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return found


async def test_records_by_id_in_the_models_shape_for_who_may_read(
    client: httpx.AsyncClient, world: World, db: Database, bank: Sender
) -> None:
    rebate = await create(client, world.ma)
    coupon = await create(
        client, world.ma, kind="coupon", rules={"face_value_fen": 500, "quantity": 10}
    )
    flash = await create(client, world.op, kind="reward")
    r = await client.post(f"{H}/data-models", json=model_body(), headers=world.op.headers)
    assert r.status_code == 201, r.text

    found = {x["key"]: x for x in await records(client, world.op.headers)}
    assert set(found) == {rebate["id"], coupon["id"], flash["id"]}
    shaped = found[rebate["id"]]
    assert shaped["systems"]["crm"]["title"] == f"{rebate['name']} / rebate"
    assert shaped["systems"]["bi"] == {"kind_code": "RB", "status": "draft"}
    assert len(shaped["systems"]["crm"]["start_date"]) == 10
    document = {
        "campaign_id": rebate["id"],
        "key": rebate["id"],
        "model": "campaign-summary",
        "systems": shaped["systems"],
        "version": 1,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert shaped["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    # The reward campaign's kind is not in the strict mapping: that record fails alone.
    assert found[flash["id"]]["systems"] is None
    assert found[flash["id"]]["failure"]["rule"] == "enum_map"
    # The listed partner reads them too; one campaign's only; a partner not listed gets 404.
    assert len(await records(client, bank.headers)) == 3
    assert [x["key"] for x in await records(client, bank.headers, campaign=coupon["id"])] == [
        coupon["id"]
    ]
    async with db.unit_of_work() as s:
        _, other = await auth_service.create_partner(s, "OTHER", "Other")
    r = await client.get(f"{H}/data-models/campaign-summary/records", headers={"X-API-Key": other})
    assert r.status_code == 404
    # A change makes version 2; version 1 still assembles in its own shape.
    await client.patch(
        f"{H}/data-models/campaign-summary",
        json={"source": "campaign", "fields": FIELDS[:1]},
        headers=world.op.headers,
    )
    now = await records(client, world.op.headers)
    assert {tuple(x["systems"]) for x in now} == {("crm",)}
    old = await records(client, world.op.headers, version=1)
    assert {x["version"] for x in old} == {1}
    assert old[0]["systems"] is None or "bi" in old[0]["systems"]


async def test_the_archive_keeps_each_record_once_and_rewrites_only_changes(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    campaigns = [await create(client, world.ma) for _ in range(3)]
    body = model_body(fields=[f for f in FIELDS if f["target_system"] == "crm"])
    assert (await client.post(f"{H}/data-models", json=body, headers=world.op.headers)).is_success

    async def archive() -> list[str]:
        changed: list[str] = []
        cursor = None
        while True:
            async with db.unit_of_work() as s:
                model = await service.get(s, "campaign-summary")
                done = await service.assemble(s, model, cursor=cursor, limit=2, archive=True)
            changed += done.work.changed
            cursor = done.next_cursor
            if cursor is None:
                return changed

    assert sorted(await archive()) == sorted(c["id"] for c in campaigns)
    assert await archive() == []
    r = await client.patch(
        f"{H}/campaigns/{campaigns[0]['id']}",
        json={"name": "Renamed", "version": campaigns[0]["version"]},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    assert await archive() == [campaigns[0]["id"]]
    async with db.unit_of_work() as s:
        rows = list(await s.scalars(select(ArchivedRecord)))
    assert len(rows) == 3
    for row in rows:
        assert row.hash == hashlib.sha256(row.document.encode()).hexdigest()
        assert json.loads(row.document)["key"] == row.record_key
