"""Issue 17: a model's records synced to its targets — archived, handed to the delivery
ledger, delivered by upsert, retried 1, 2, 4 … minutes apart, dead-lettered and replayed, a
target rebuilt from the archive, and a worker killed mid-delivery (``kill -9``) resumed with
every record in the target exactly once in effect (keys and hashes match the archive)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Column, MetaData, String, Table, Text, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from incentive.config import service as config_service
from incentive.data_models import mirror, service, sync
from incentive.data_models.models import ArchivedRecord, Delivery, SyncPosition
from incentive.db import Database, utcnow
from incentive.settings import Settings
from tests.campaigns.conftest import World, create
from tests.data_models.conftest import SECRET, Receiver, target_database, target_servers
from tests.data_models.test_registry import FIELDS, model_body

H = "/api/v1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No worker jobs in the test's app: the test delivers when it says (the worker process
    of the crash test is a real one)."""
    return settings.model_copy(update={"embedded_worker": False})


CRM = [f for f in FIELDS if f["target_system"] == "crm"]
CRM_TABLE = Table(
    "crm_campaigns",
    MetaData(),
    Column("record_key", String(128), primary_key=True),
    Column("record_hash", String(64)),
    Column("campaign_id", String(64)),
    Column("title", Text),
    Column("start_date", String(10)),
)


@pytest.fixture
def sql_stores() -> Iterator[list[str]]:
    """A database of its own on each SQL target server this run has (PostgreSQL on its run,
    MariaDB when INCENTIVE_TEST_MARIADB_URL is set): the crash test syncs to every one."""
    with ExitStack() as stack:
        yield [stack.enter_context(target_database(kind)) for kind in target_servers()]


async def setup(
    client: httpx.AsyncClient,
    world: World,
    receiver: Receiver,
    campaigns: int,
    fields: list[dict[str, Any]] = CRM,
) -> list[dict[str, Any]]:
    made = [await create(client, world.ma) for _ in range(campaigns)]
    r = await client.post(
        f"{H}/data-models", json=model_body(fields=fields), headers=world.op.headers
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        f"{H}/data-models/campaign-summary/targets",
        json={
            "name": "crm-hook",
            "system": "crm",
            "config": {"kind": "webhook", "url": receiver.url, "secret": SECRET},
        },
        headers=world.op.headers,
    )
    assert r.status_code == 201, r.text
    assert "secret" not in r.text
    return made


async def backfill(db: Database, batch: int = 2) -> list[str]:
    handed: list[str] = []
    position = None
    while True:
        async with db.unit_of_work() as s:
            work, position = await sync.backfill_page(
                s, "campaign-summary", position=position, limit=batch
            )
        handed += work.changed
        if position is None:
            return handed


def received(receiver: Receiver) -> dict[str, tuple[str, dict[str, Any]]]:
    """What the receiver holds, as a store upserting on the key would: key -> (hash, values)."""
    held: dict[str, tuple[str, dict[str, Any]]] = {}
    for _, body in receiver.posts:
        for record in json.loads(body)["records"]:
            held[record["key"]] = (record["hash"], record["values"])
    return held


async def archived(db: Database) -> dict[str, str]:
    async with db.unit_of_work() as s:
        rows = await s.execute(select(ArchivedRecord.record_key, ArchivedRecord.hash))
        return dict(rows.all())


async def ledger(db: Database) -> dict[str, int]:
    async with db.unit_of_work() as s:
        rows = await s.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
        return {state: int(n) for state, n in rows}


async def set_config(db: Database, app: Any, name: str, value: Any) -> None:
    async with db.unit_of_work() as s:
        await config_service.set_value(s, name, value, actor="test")
    await app.state.config.reload()


async def test_records_reach_the_target_once_and_again_when_they_change(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    made = await setup(client, world, receiver, 5)
    assert sorted(await backfill(db)) == sorted(c["id"] for c in made)
    assert await ledger(db) == {"pending": 5}
    assert (await sync.deliver_due(db))["delivered"] == 5
    assert {k: h for k, (h, _) in received(receiver).items()} == await archived(db)
    assert received(receiver)[made[0]["id"]][1]["campaign_id"] == made[0]["id"]
    assert await ledger(db) == {"delivered": 5}
    # Nothing changed: a second backfill hands nothing and nothing is sent.
    posts = len(receiver.posts)
    assert await backfill(db) == []
    assert (await sync.deliver_due(db))["delivered"] == 0
    assert len(receiver.posts) == posts
    # One campaign renamed: only it goes again, with its new hash.
    r = await client.patch(
        f"{H}/campaigns/{made[0]['id']}",
        json={"name": "Renamed", "version": made[0]["version"]},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    assert await backfill(db) == [made[0]["id"]]
    assert (await sync.deliver_due(db))["delivered"] == 1
    assert received(receiver)[made[0]["id"]][1]["title"].startswith("Renamed")
    assert {k: h for k, (h, _) in received(receiver).items()} == await archived(db)


async def test_failures_back_off_then_dead_letter_and_replay(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, receiver: Receiver
) -> None:
    await setup(client, world, receiver, 3)
    await set_config(db, app, "data_models.delivery_attempts", 3)
    await backfill(db)
    receiver.script = [500, 503, 500]
    now = utcnow()
    assert await sync.deliver_due(db, now) == {"delivered": 0, "retried": 3, "dead": 0}
    # Not due again before a minute; then 2 minutes after that; then dead.
    assert await sync.deliver_due(db, now + timedelta(seconds=59)) == {
        "delivered": 0,
        "retried": 0,
        "dead": 0,
    }
    assert (await sync.deliver_due(db, now + timedelta(minutes=1)))["retried"] == 3
    assert (await sync.deliver_due(db, now + timedelta(minutes=2)))["retried"] == 0
    assert (await sync.deliver_due(db, now + timedelta(minutes=3)))["dead"] == 3
    r = await client.get(f"{H}/data-models/campaign-summary/dead-letters", headers=world.op.headers)
    dead = r.json()["items"]
    assert [(d["target"], d["attempts"]) for d in dead] == [("crm-hook", 3)] * 3
    assert "500" in dead[0]["last_error"]
    targets = (
        await client.get(f"{H}/data-models/campaign-summary/targets", headers=world.op.headers)
    ).json()["targets"]
    assert targets[0]["deliveries"] == {"dead": 3}
    assert SECRET not in json.dumps(targets)
    r = await client.post(
        f"{H}/data-models/campaign-summary/dead-letters/replay",
        json={"target": "crm-hook"},
        headers=world.op.headers,
    )
    assert r.json() == {"count": 3}
    assert (await sync.deliver_due(db))["delivered"] == 3
    assert {k: h for k, (h, _) in received(receiver).items()} == await archived(db)


async def test_a_refusal_is_a_dead_letter_at_once_and_a_target_is_rebuilt_from_the_archive(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    await setup(client, world, receiver, 2)
    await backfill(db)
    receiver.script = [400, 400, 400]  # the write of both, then each alone
    assert (await sync.deliver_due(db))["dead"] == 2
    receiver.posts.clear()
    r = await client.post(
        f"{H}/data-models/campaign-summary/targets/crm-hook/rebuild", headers=world.op.headers
    )
    assert r.json() == {"count": 2}
    assert (await sync.deliver_due(db))["delivered"] == 2
    assert {k: h for k, (h, _) in received(receiver).items()} == await archived(db)


async def test_a_delivery_sends_the_document_of_the_version_it_wants(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    await setup(client, world, receiver, 2)
    await backfill(db)  # version 1 wanted, not delivered yet
    fields = [
        {**f, "rule": {**f["rule"], "separator": " | "}} if f["key"] == "name" else f for f in CRM
    ]
    r = await client.patch(
        f"{H}/data-models/campaign-summary",
        json={"source": "campaign", "fields": fields},
        headers=world.op.headers,
    )
    assert r.json()["version"] == 2, r.text
    # Version 2 archived (as ``data-models archive`` does) but handed to no target.
    async with db.unit_of_work() as s:
        model = await service.get(s, "campaign-summary")
        assert len((await service.assemble(s, model, archive=True)).work.changed) == 2
    assert (await sync.deliver_due(db))["delivered"] == 2
    async with db.unit_of_work() as s:
        rows = await s.execute(
            select(ArchivedRecord.record_key, ArchivedRecord.hash, ArchivedRecord.document).where(
                ArchivedRecord.version == 1
            )
        )
        v1 = {k: (h, json.loads(doc)["systems"]["crm"]) for k, h, doc in rows}
    assert received(receiver) == v1
    assert all(" / " in values["title"] for _, values in v1.values())


async def _cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _until(check: Any) -> None:
    async with asyncio.timeout(180):  # a loaded CI machine starts a worker slowly
        while not await check():  # noqa: ASYNC110 - polling the database and the receiver
            await asyncio.sleep(0.1)


async def test_a_worker_killed_mid_delivery_resumes_and_every_record_lands_once(
    client: httpx.AsyncClient,
    world: World,
    db: Database,
    app: Any,
    receiver: Receiver,
    worker_env: dict[str, str],
    settings: Settings,
    sql_stores: list[str],
) -> None:
    made = await setup(client, world, receiver, 12)
    for i, url in enumerate(sql_stores):
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(CRM_TABLE.create)
        await engine.dispose()
        config = {"kind": "sql", "url": url, "table": "crm_campaigns", "hash_column": "record_hash"}
        r = await client.post(
            f"{H}/data-models/campaign-summary/targets",
            json={"name": f"crm-sql-{i}", "system": "crm", "config": config},
            headers=world.op.headers,
        )
        assert r.status_code == 201, r.text
    wanted = 12 * (1 + len(sql_stores))
    await set_config(db, app, "data_models.delivery_lease_seconds", 2)
    await set_config(db, app, "data_models.deliver_every_seconds", 0.2)
    # The backfill by the command: every record archived once, its position kept to the end.
    sync_cmd = await _cli(worker_env, "data-models", "sync", "campaign-summary", "--batch", "3")
    out, _ = await asyncio.wait_for(sync_cmd.communicate(), 120)
    assert sync_cmd.returncode == 0, out.decode()
    async with db.unit_of_work() as s:
        position = await s.get(SyncPosition, "campaign-summary")
        assert position is not None
        assert (position.position, position.done) == (None, 12)
    assert len(await archived(db)) == 12
    # A worker delivers; the receiver is slow, so it is killed with its write in flight.
    receiver.script = ["slow-commit"]
    worker = await _cli(worker_env, "worker")

    async def posted() -> bool:
        return receiver.arrivals > 0

    await _until(posted)
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    assert (await ledger(db)).get("delivered", 0) < wanted
    again = await _cli(worker_env, "worker")
    try:

        async def all_delivered() -> bool:
            return await ledger(db) == {"delivered": wanted}

        await _until(all_delivered)
    finally:
        again.send_signal(signal.SIGTERM)
        await asyncio.wait_for(again.wait(), 60)
    assert receiver.arrivals >= 2  # at least once: the killed write went again
    held = received(receiver)
    assert sorted(held) == sorted(c["id"] for c in made)
    assert {k: h for k, (h, _) in held.items()} == await archived(db)
    # Every SQL target holds each record once, with the archive's hash.
    for url in sql_stores:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(CRM_TABLE))).mappings().all()
        await engine.dispose()
        assert {r["record_key"]: r["record_hash"] for r in rows} == await archived(db)


async def test_the_archive_is_mirrored_in_redis_and_again_after_redis_lost_it(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver, redis: Any
) -> None:
    await setup(client, world, receiver, 3)
    await backfill(db)
    assert await mirror.mirror(db, redis) == 3
    mirrored = {
        k.decode(): v.decode()
        for k, v in (await redis.hgetall("incentive:data-models:campaign-summary:1")).items()
    }
    async with db.unit_of_work() as s:
        documents = dict(
            (await s.execute(select(ArchivedRecord.record_key, ArchivedRecord.document))).all()
        )
    assert mirrored == documents
    # Nothing new: only the last minute is looked at again (copied again, harmlessly).
    assert await mirror.mirror(db, redis) <= 3
    await redis.flushdb()  # Redis restarted empty: the database is the durable copy
    assert await mirror.mirror(db, redis) == 3
    assert await redis.hlen("incentive:data-models:campaign-summary:1") == 3


async def test_a_campaigns_status_change_resyncs_it_through_the_outbox(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    from incentive.events.backends.inprocess import InProcessTransport
    from incentive.events.relay import Relay

    status = {"key": "status", "module_type": "string", "target_system": "crm"}
    made = await setup(client, world, receiver, 2, [*CRM, {**status, "mapped_field": "status"}])
    await backfill(db)
    await sync.deliver_due(db)
    r = await client.post(
        f"{H}/campaigns/{made[1]['id']}/transitions",
        json={"to": "cancelled"},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    await Relay(db, InProcessTransport(db), retry_base_seconds=0.01).drain()
    assert await ledger(db) == {"delivered": 1, "pending": 1}
    assert (await sync.deliver_due(db))["delivered"] == 1
    assert received(receiver)[made[1]["id"]][1]["status"] == "cancelled"
    assert {k: h for k, (h, _) in received(receiver).items()} == await archived(db)


async def test_a_record_that_changes_while_its_delivery_is_in_flight_goes_again(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    made = await setup(client, world, receiver, 2)
    await backfill(db)
    receiver.script = ["slow"]  # kept, answered 2 s later
    in_flight = asyncio.create_task(sync.deliver_due(db))

    async def arrived() -> bool:
        return receiver.arrivals > 0

    await _until(arrived)
    r = await client.patch(
        f"{H}/campaigns/{made[0]['id']}",
        json={"name": "Changed meanwhile", "version": made[0]["version"]},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    assert await backfill(db) == [made[0]["id"]]
    await in_flight
    # The old hash reached the target, the new one is still wanted there.
    assert await ledger(db) == {"delivered": 1, "pending": 1}
    assert (await sync.deliver_due(db))["delivered"] == 1
    assert received(receiver)[made[0]["id"]][1]["title"].startswith("Changed meanwhile")
    assert {k: h for k, (h, _) in received(receiver).items()} == await archived(db)


async def test_a_record_that_cannot_be_assembled_is_recorded_and_stops_nothing_else(
    client: httpx.AsyncClient, world: World, db: Database, receiver: Receiver
) -> None:
    kind = next(f for f in FIELDS if f["key"] == "kind")
    made = await setup(client, world, receiver, 2, [*CRM, {**kind, "target_system": "crm"}])
    odd = await create(client, world.op, kind="reward")  # not in the strict mapping
    assert sorted(await backfill(db)) == sorted(c["id"] for c in made)
    r = await client.get(f"{H}/data-models/campaign-summary/failures", headers=world.op.headers)
    [failure] = r.json()["items"]
    assert (failure["record_key"], failure["field"], failure["rule"]) == (
        odd["id"],
        "kind",
        "enum_map",
    )
    assert (await sync.deliver_due(db))["delivered"] == 2
