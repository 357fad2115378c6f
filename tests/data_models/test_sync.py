"""Issue 17: a model's records synced to its targets — archived, handed to the delivery
ledger, delivered by upsert, retried 1, 2, 4 … minutes apart, dead-lettered and replayed, a
target rebuilt from the archive, and a worker killed mid-delivery (``kill -9``) resumed with
every record in the target exactly once in effect (keys and hashes match the archive)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.config import service as config_service
from incentive.data_models import sync
from incentive.data_models.models import ArchivedRecord, Delivery, SyncPosition
from incentive.db import Database, utcnow
from incentive.settings import Settings
from tests.campaigns.conftest import World, create
from tests.data_models.conftest import SECRET, Receiver
from tests.data_models.test_registry import FIELDS, model_body

H = "/api/v1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No worker jobs in the test's app: the test delivers when it says (the worker process
    of the crash test is a real one)."""
    return settings.model_copy(update={"embedded_worker": False})


CRM = [f for f in FIELDS if f["target_system"] == "crm"]


async def setup(
    client: httpx.AsyncClient, world: World, receiver: Receiver, campaigns: int
) -> list[dict[str, Any]]:
    made = [await create(client, world.ma) for _ in range(campaigns)]
    r = await client.post(f"{H}/data-models", json=model_body(fields=CRM), headers=world.op.headers)
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
    async with asyncio.timeout(60):
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
) -> None:
    made = await setup(client, world, receiver, 12)
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
    receiver.script = ["slow"]
    worker = await _cli(worker_env, "worker")

    async def posted() -> bool:
        return bool(receiver.posts)

    await _until(posted)
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    assert (await ledger(db)).get("delivered", 0) < 12
    again = await _cli(worker_env, "worker")
    try:

        async def all_delivered() -> bool:
            return await ledger(db) == {"delivered": 12}

        await _until(all_delivered)
    finally:
        again.send_signal(signal.SIGTERM)
        await asyncio.wait_for(again.wait(), 30)
    assert len(receiver.posts) >= 2  # at least once: the killed write went again
    held = received(receiver)
    assert sorted(held) == sorted(c["id"] for c in made)
    assert {k: h for k, (h, _) in held.items()} == await archived(db)
