"""An outside review of issue 17's data models: what an operator met using them (a `since` with
no UTC instant, a model changed while deliveries of its old version were pending, a
per-target backfill of a target registered after the archive was made, credentials in a
URL's query, an impossible port)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from incentive.auth.models import AuditEntry
from incentive.data_models import sync
from incentive.data_models.models import ArchivedRecord, DataTarget, Delivery
from incentive.data_models.targets import TargetConfig
from incentive.db import Database, new_id, utcnow
from incentive.kit import webhooks
from incentive.kit.sources import get_source
from incentive.settings import Settings
from tests.campaigns.conftest import World, create
from tests.data_models.conftest import SECRET, Receiver, serving
from tests.data_models.test_registry import model_body
from tests.data_models.test_sync import CRM, backfill, received, setup

H = "/api/v1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"embedded_worker": False})


async def test_a_since_with_no_utc_instant_is_a_422_naming_since(
    client: httpx.AsyncClient, world: World
) -> None:
    r = await client.post(f"{H}/data-models", json=model_body(), headers=world.op.headers)
    assert r.status_code == 201, r.text
    for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        r = await client.get(
            f"{H}/data-models/campaign-summary/records",
            params={"since": since},
            headers=world.op.headers,
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "since"


async def test_deliveries_of_an_old_and_a_new_version_pending_together_all_land(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    made = await setup(client, world, receiver, 2)
    await backfill(db)  # both records pending at version 1
    changed = [dict(f) for f in CRM]
    changed[2] = {**changed[2], "rule": {"type": "date_format", "format": "%Y/%m/%d"}}
    r = await client.patch(
        f"{H}/data-models/campaign-summary",
        json={"source": "campaign", "fields": changed},
        headers=world.op.headers,
    )
    assert r.json()["version"] == 2
    async with db.unit_of_work() as s:  # one record changes before the first is delivered
        rows = await get_source("campaign").by_keys(s, [made[0]["id"]])
        await sync.sync_rows(s, "campaign-summary", rows)
        versions = dict((await s.execute(select(Delivery.record_key, Delivery.version))).all())
    assert versions == {made[0]["id"]: 2, made[1]["id"]: 1}
    assert (await sync.deliver_due(db))["delivered"] == 2
    async with db.unit_of_work() as s:
        wanted = {
            (k, v): h
            for k, v, h in await s.execute(
                select(ArchivedRecord.record_key, ArchivedRecord.version, ArchivedRecord.hash)
            )
        }
    held = received(receiver)
    assert held[made[0]["id"]][0] == wanted[(made[0]["id"], 2)]
    assert held[made[1]["id"]][0] == wanted[(made[1]["id"], 1)]
    assert {json.loads(body)["version"] for _, body in receiver.posts} == {1, 2}


async def test_a_backfill_of_one_target_sends_it_what_was_archived_before_it(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    made = await setup(client, world, receiver, 3)
    await backfill(db)
    assert (await sync.deliver_due(db))["delivered"] == 3
    r = await client.post(
        f"{H}/data-models/campaign-summary/targets",
        json={
            "name": "late-hook",
            "system": "crm",
            "config": {"kind": "webhook", "url": receiver.url + "?late=1", "secret": SECRET},
        },
        headers=world.op.headers,
    )
    assert r.status_code == 201, r.text
    receiver.posts.clear()

    async def backfill_late() -> None:  # `incentive data-models sync M --target late-hook`
        position = None
        while True:
            async with db.unit_of_work() as s:
                late = await sync.target_named(s, "campaign-summary", "late-hook")
                _, position = await sync.backfill_page(
                    s, "campaign-summary", position=position, only=late, limit=2
                )
            if position is None:
                return

    await backfill_late()
    assert (await sync.deliver_due(db))["delivered"] == 3
    assert sorted(received(receiver)) == sorted(c["id"] for c in made)
    # Run again: the target holds every record as it is, nothing goes twice.
    receiver.posts.clear()
    await backfill_late()
    assert (await sync.deliver_due(db))["delivered"] == 0
    assert receiver.posts == []


async def test_credentials_in_a_url_query_are_never_shown(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    await create(client, world.ma)
    r = await client.post(f"{H}/data-models", json=model_body(), headers=world.op.headers)
    assert r.status_code == 201, r.text
    configs = {
        "pg": {
            "kind": "sql",
            "url": "postgresql+asyncpg://u@db.example/x?password=hunter2-sql&sslmode=require",
            "table": "t",
        },
        "rd": {"kind": "redis", "url": "redis://r.example/0?password=hunter2-redis", "prefix": "p"},
        "wh": {
            "kind": "webhook",
            "url": "https://h.example/in?access_token=hunter2-hook&x=1",
            "secret": SECRET,
        },
    }
    shown: list[Any] = []
    for name, config in configs.items():
        r = await client.post(
            f"{H}/data-models/campaign-summary/targets",
            json={"name": name, "system": "crm", "config": config},
            headers=world.op.headers,
        )
        assert r.status_code == 201, r.text
        shown.append(r.json())
    shown.append(
        (
            await client.get(f"{H}/data-models/campaign-summary/targets", headers=world.op.headers)
        ).json()
    )
    async with db.unit_of_work() as s:
        shown += [e.detail for e in await s.scalars(select(AuditEntry))]
    assert "hunter2" not in json.dumps(shown)
    assert "sslmode=require" in json.dumps(shown)


def test_a_target_url_with_an_impossible_port_is_refused() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(TargetConfig)
    for config in (
        {"kind": "sql", "url": "postgresql+asyncpg://h:99999/db", "table": "t"},
        {"kind": "redis", "url": "redis://h:99999/0", "prefix": "p"},
        {"kind": "webhook", "url": "http://h:99999/x", "secret": SECRET},
        {"kind": "webhook", "url": "http://h:port/x", "secret": SECRET},
    ):
        with pytest.raises(ValidationError, match="url"):
            adapter.validate_python(config)


class LateStore:
    """A webhook receiver that upserts on the key when it answers; its first write is slow (a
    store committing late), so an older write in flight lands after a newer one."""

    def __init__(self) -> None:
        self.url = ""
        self.held: dict[str, str] = {}
        self.first = asyncio.Event()
        self.calls = 0

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        webhooks.verify(SECRET, request.headers, body)
        self.calls += 1
        if self.calls == 1:
            self.first.set()
            await asyncio.sleep(2)
        for record in json.loads(body)["records"]:
            self.held[record["key"]] = record["hash"]
        return Response("")


@pytest.fixture
async def late_store() -> AsyncIterator[LateStore]:
    store = LateStore()
    async with serving(store.endpoint) as url:
        store.url = url
        yield store


async def test_a_record_changed_while_its_delivery_is_in_flight_ends_as_archived(
    client: httpx.AsyncClient, world: World, db: Database, late_store: LateStore
) -> None:
    (made,) = await setup(client, world, late_store, 1)  # type: ignore[arg-type]
    await backfill(db)
    first = asyncio.create_task(sync.deliver_due(db))  # a worker writes hash 1, slowly
    await asyncio.wait_for(late_store.first.wait(), 10)
    r = await client.patch(
        f"{H}/campaigns/{made['id']}",
        json={"name": "Renamed", "version": made["version"]},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    async with db.unit_of_work() as s:  # the outbox subscriber's re-sync: hash 2 wanted
        rows = await get_source("campaign").by_keys(s, [made["id"]])
        await sync.sync_rows(s, "campaign-summary", rows)
    await sync.deliver_due(db)  # a second worker, meanwhile
    await first
    while (await sync.deliver_due(db))["delivered"]:
        pass
    async with db.unit_of_work() as s:
        wanted = await s.scalar(
            select(ArchivedRecord.hash).where(ArchivedRecord.record_key == made["id"])
        )
        ledger = (await s.execute(select(Delivery.state, Delivery.delivered_hash))).one()
    assert late_store.held[made["id"]] == wanted
    assert tuple(ledger) == ("delivered", wanted)


async def test_a_stored_target_a_newer_check_refuses_is_listed_and_dead_lettered(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    """A target registered before its config failed a check (a port beyond 65535 was taken
    once): listing the targets is no 500, its deliveries are refusals, no credential shown."""
    await create(client, world.ma)
    r = await client.post(f"{H}/data-models", json=model_body(), headers=world.op.headers)
    assert r.status_code == 201, r.text
    async with db.unit_of_work() as s:
        now = utcnow()
        s.add(
            DataTarget(
                id=new_id(),
                model_id="campaign-summary",
                name="old",
                system="crm",
                config={"kind": "redis", "url": "redis://u:hunter2@h:99999/0", "prefix": "p",
                        "mode": "hash", "stream_maxlen": None},
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )  # fmt: skip
    await backfill(db)
    assert (await sync.deliver_due(db))["dead"] == 1
    r = await client.get(f"{H}/data-models/campaign-summary/targets", headers=world.op.headers)
    assert r.status_code == 200, r.text
    assert r.json()["targets"][0]["kind"] == "redis"
    r2 = await client.get(
        f"{H}/data-models/campaign-summary/dead-letters", headers=world.op.headers
    )
    assert "not valid now" in r2.json()["items"][0]["last_error"]
    assert "hunter2" not in r.text + r2.text


async def test_a_backfill_of_one_target_leaves_what_changed_to_the_others_too(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    """`sync M --target late` archives what changed: the archive will not call it changed
    again, so the other targets must be handed it then."""
    made = await setup(client, world, receiver, 2)
    r = await client.post(
        f"{H}/data-models/campaign-summary/targets",
        json={
            "name": "late-hook",
            "system": "crm",
            "config": {"kind": "webhook", "url": receiver.url + "?late=1", "secret": SECRET},
        },
        headers=world.op.headers,
    )
    assert r.status_code == 201, r.text
    async with db.unit_of_work() as s:
        late = await sync.target_named(s, "campaign-summary", "late-hook")
        await sync.backfill_page(s, "campaign-summary", position=None, only=late, limit=10)
    await backfill(db)  # then every target's backfill
    async with db.unit_of_work() as s:
        rows = await s.execute(select(Delivery.target_id, Delivery.record_key))
        wanted = {(t, k) for t, k in rows}
    crm = {t for t, _ in wanted} - {late.id}
    assert len(crm) == 1, "the first target was handed nothing"
    assert wanted == {(t, c["id"]) for t in (*crm, late.id) for c in made}


class PickyStore(LateStore):
    """Refuses (422) any write that holds the record ``refuse``; takes the rest."""

    refuse = ""

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        webhooks.verify(SECRET, request.headers, body)
        records = json.loads(body)["records"]
        if any(r["key"] == self.refuse for r in records):
            return Response("no", status_code=422)
        for record in records:
            self.held[record["key"]] = record["hash"]
        return Response("")


@pytest.fixture
async def picky_store() -> AsyncIterator[PickyStore]:
    store = PickyStore()
    async with serving(store.endpoint) as url:
        store.url = url
        yield store


async def test_a_record_the_target_refuses_dies_alone(
    client: httpx.AsyncClient, world: World, db: Database, picky_store: PickyStore
) -> None:
    """One record a target refuses (a value its column cannot hold, a 4xx) is a dead letter;
    the others of the same write are delivered, not dead beside it."""
    made = await setup(client, world, picky_store, 3)  # type: ignore[arg-type]
    picky_store.refuse = made[0]["id"]
    await backfill(db)
    assert await sync.deliver_due(db) == {"delivered": 2, "retried": 0, "dead": 1}
    assert sorted(picky_store.held) == sorted(c["id"] for c in made[1:])
    r = await client.get(f"{H}/data-models/campaign-summary/dead-letters", headers=world.op.headers)
    assert [d["key"] for d in r.json()["items"]] == [made[0]["id"]]
