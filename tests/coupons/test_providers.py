"""Third-party coupons against a real provider on loopback (tests/coupons/fake_provider.py):
batches synced by pull and by signed webhook, activation exactly once through timeouts,
5xx and duplicate or late callbacks, a worker killed mid-call, redemption, revocation and
reconciliation. Workers are not embedded here: each test sends the calls itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from incentive.config import service as config_service
from incentive.coupons import calls
from incentive.coupons.models import CouponRedemption, ProviderCall
from incentive.db import Database
from incentive.kit.webhooks import sign
from incentive.settings import Settings
from tests.activities.conftest import Sender, payment
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import World, create, walk
from tests.coupons.conftest import claim, coupons_of, customers, history
from tests.coupons.fake_provider import FakeProvider
from tests.servers import free_port

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
FAST = {
    "coupons.provider_timeout_seconds": 0.5,
    "coupons.provider_retry_base_seconds": 0.05,
    "coupons.provider_retry_max_seconds": 0.2,
    "coupons.provider_call_attempts": 40,
    "coupons.provider_call_lease_seconds": 1.0,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"embedded_worker": False})


@pytest.fixture
async def served(app: Any) -> AsyncIterator[str]:
    """The app on a real loopback port, for the provider's webhooks."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.fixture
def fake(served: str) -> Iterator[FakeProvider]:
    with FakeProvider(
        credentials="acme-key",
        webhook_url=f"{served}/api/v1/coupon-providers/acme/webhooks",
        webhook_secret=SECRET,
    ) as provider:
        yield provider


async def configure(db: Database, app: Any, **values: Any) -> None:
    async with db.unit_of_work() as s:
        for key, value in {**FAST, **values}.items():
            await config_service.set_value(s, key, value, actor="test")
    await app.state.config.reload()


async def register(client: httpx.AsyncClient, world: World, fake: FakeProvider) -> None:
    r = await client.post(
        "/api/v1/coupon-providers",
        json={
            "code": "acme",
            "name": "Acme coupons",
            "base_url": fake.base_url,
            "credentials": "acme-key",
            "webhook_secret": SECRET,
        },
        headers=world.op.headers,
    )
    assert r.status_code == 201, r.text
    synced = await client.post("/api/v1/coupon-providers/acme/sync", headers=world.op.headers)
    assert synced.status_code == 200, synced.text


async def provider_campaign(
    client: httpx.AsyncClient, world: World, external: str, **rules: Any
) -> str:
    campaign = await create(
        client,
        world.ma,
        kind="coupon",
        rules={"provider": "acme", "provider_batch": external, **rules},
    )
    await walk(client, world, campaign["id"], "pending_review", "approved", "active")
    r = await client.get(
        "/api/v1/coupon-batches", params={"campaign_id": campaign["id"]}, headers=world.op.headers
    )
    batch_id: str = r.json()["items"][0]["id"]
    return batch_id


async def settle(db: Database, sender: calls.Sender, seconds: float = 60) -> None:
    """Send calls until none is pending or in flight."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await sender.run_once()
        async with db.unit_of_work() as s:
            open_ = await s.scalar(
                select(ProviderCall.id).where(ProviderCall.state.in_(("pending", "in_flight")))
            )
        if open_ is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("provider calls did not settle")


async def usable_provider_coupon(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    fake: FakeProvider,
    app: Any,
    coupon_sender: calls.Sender,
) -> dict[str, Any]:
    """A coupon of provider acme's batch B1 in the customer's wallet, issued and usable."""
    await configure(db, app)
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    first = (await claim(client, world.cust, batch)).json()
    await settle(db, coupon_sender)
    r = await client.get(f"/api/v1/me/coupons/{first['id']}", headers=world.cust.headers)
    mine: dict[str, Any] = r.json()
    assert mine["state"] == "usable"
    assert mine["provider_code"]
    return mine


async def test_batches_arrive_by_pull_and_by_signed_webhook(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    await configure(db, app)
    fake.add_batch("B1", stock=5, face_value_fen=300, min_spend_fen=1000)
    await register(client, world, fake)
    listed = await client.get(
        "/api/v1/coupon-batches", params={"provider": "acme"}, headers=world.op.headers
    )
    (batch,) = listed.json()["items"]
    assert (batch["external_id"], batch["stock"], batch["provider_state"]) == ("B1", 5, "running")
    assert batch["face_value_fen"] == 300
    assert batch["open"] is False

    fake.set_batch("B1", state="paused", stock=4)
    for _ in range(200):
        got = await client.get(f"/api/v1/coupon-batches/{batch['id']}", headers=world.op.headers)
        if got.json()["provider_state"] == "paused":
            break
        await asyncio.sleep(0.02)
    assert got.json()["provider_state"] == "paused"
    assert got.json()["stock"] == 4

    body = json.dumps({"type": "batch.updated", "data": {**_batch_json("B1"), "stock": 99}})
    stamp = int(time.time())
    forged = await client.post(
        "/api/v1/coupon-providers/acme/webhooks",
        content=body,
        headers={
            "content-type": "application/json",
            "webhook-id": "m1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(
                "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==", "m1", stamp, body.encode()
            ),
        },
    )
    assert forged.status_code == 401
    got = await client.get(f"/api/v1/coupon-batches/{batch['id']}", headers=world.op.headers)
    assert got.json()["stock"] == 4


def _batch_json(external: str) -> dict[str, Any]:
    return {
        "id": external,
        "name": "x",
        "state": "running",
        "stock": 1,
        "face_value_fen": 1,
        "min_spend_fen": 0,
        "valid_from": None,
        "valid_until": None,
    }


async def test_claims_never_promise_more_than_the_provider_has(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    await configure(db, app)
    fake.add_batch("B1", stock=3)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1", task={"activity": "payment"})
    people = await customers(db, app, 5)
    answers = [(await claim(client, p, batch)).status_code for p in people]
    assert answers == [201, 201, 201, 409, 409]
    # A sync while three claims are outstanding keeps them out of the stock.
    await client.post("/api/v1/coupon-providers/acme/sync", headers=world.op.headers)
    got = await client.get(f"/api/v1/coupon-batches/{batch}", headers=world.op.headers)
    assert got.json()["stock"] == 0
    assert got.json()["counts"] == {"received": 3}
    assert fake.issued == 0  # locked coupons are not issued at the provider


async def test_with_the_provider_failing_half_its_calls_every_task_ends_with_one_usable_coupon(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    fake: FakeProvider,
    app: Any,
    sender: Sender,
) -> None:
    await configure(db, app)
    fake.add_batch("B1", stock=100)
    await register(client, world, fake)
    batch = await provider_campaign(
        client, world, "B1", task={"activity": "payment", "min_amount_fen": 100}
    )
    people = await customers(db, app, 30)
    for p in people:
        assert (await claim(client, p, batch)).status_code == 201
    fake.duplicate_callbacks = True
    fake.callback_delay = 0.3
    fake.set_faults(fail_ratio=0.5, timeout_ratio=0.2, hang_seconds=1.0, seed=7)
    r = await client.post(
        "/api/v1/activities/batch",
        json={
            "activities": [
                payment(f"p{i}", p.user.id, world.merchant_a, 500) for i, p in enumerate(people)
            ]
        },
        headers=sender.headers,
    )
    assert r.status_code in (200, 201), r.text
    coupon_sender = calls.Sender(db)
    try:
        await settle(db, coupon_sender)
    finally:
        await coupon_sender.aclose()
    await asyncio.sleep(1.0)  # late and duplicate callbacks land
    ours = await coupons_of(db, batch)
    assert {c.state for c in ours} == {"usable"}, [(c.state, c.reason) for c in ours]
    theirs = {c.request_no: c for c in fake.coupons()}
    assert fake.issued == len(ours) == 30
    for coupon in ours:
        assert coupon.request_no is not None
        assert fake.issued_for(coupon.request_no) == 1
        assert coupon.provider_code == theirs[coupon.request_no].code
    assert fake.calls("issue") > 30  # the faults really happened
    unknown = [c for c in ours if ("activating", "unknown") in await history(db, c.id)]
    assert unknown, "some answers should have been unclear (timeouts)"


async def test_a_worker_killed_during_activation_resumes_with_the_same_request_number(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    fake: FakeProvider,
    app: Any,
    settings: Settings,
    database_url: str,
) -> None:
    await configure(db, app, **{"coupons.provider_timeout_seconds": 30.0})
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    coupon = (await claim(client, world.cust, batch)).json()
    assert coupon["state"] == "activating"
    (row,) = await coupons_of(db, batch)
    fake.set_faults(timeout_ratio=1.0, hang_seconds=60.0)  # does the work, then never answers
    fake.webhook_url = None  # and sends no callback: only asking can tell what happened
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(settings.data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "ERROR",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "incentive.cli", "coupons", "send-calls", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(600):
            if fake.issued_for(row.request_no or "") == 1:
                break
            await asyncio.sleep(0.02)
        assert fake.issued_for(row.request_no or "") == 1, "the worker never reached the provider"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        await proc.wait()
    fake.set_faults(timeout_ratio=0.0)
    async with db.unit_of_work() as s:
        call = await s.scalar(select(ProviderCall).where(ProviderCall.coupon_id == row.id))
        assert call is not None
        assert call.state == "in_flight"
        assert call.attempts == 1
    await asyncio.sleep(1.1)  # the dead worker's lease runs out
    coupon_sender = calls.Sender(db)
    try:
        await settle(db, coupon_sender)
    finally:
        await coupon_sender.aclose()
    (after,) = await coupons_of(db, batch)
    assert after.state == "usable"
    assert after.request_no == row.request_no
    assert fake.issued == 1
    assert fake.issued_for(row.request_no or "") == 1
    assert after.provider_code == fake.coupons()[0].code
    async with db.unit_of_work() as s:
        call = await s.scalar(select(ProviderCall).where(ProviderCall.coupon_id == row.id))
        assert call is not None
        assert (call.state, call.attempts) == ("done", 2)


async def test_a_third_party_coupon_is_redeemed_undone_and_revoked_at_the_provider(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    coupon_sender = calls.Sender(db)
    try:
        mine = first = await usable_provider_coupon(client, db, world, fake, app, coupon_sender)
        r = await client.post(
            "/api/v1/till/redemptions",
            json={"code": mine["code"], "amount_fen": 5_000},
            headers={**world.ma.headers, "Idempotency-Key": "sale"},
        )
        assert r.status_code == 201
        assert r.json()["provider_state"] == "pending"
        await settle(db, coupon_sender)
        assert fake.redeemed == 1
        undo = await client.post(
            f"/api/v1/till/redemptions/{r.json()['id']}/undo", headers=world.ma.headers
        )
        assert undo.status_code == 200
        await settle(db, coupon_sender)
        assert fake.reversed == 1
        async with db.unit_of_work() as s:
            red = await s.get(CouponRedemption, r.json()["id"])
            assert red is not None
            assert red.provider_state == "reversed"
        revoked = await client.post(
            f"/api/v1/coupons/{first['id']}/revocation",
            json={"reason": "fraud"},
            headers=world.op.headers,
        )
        assert revoked.status_code == 200
        await settle(db, coupon_sender)
        assert fake.revoked == 1
    finally:
        await coupon_sender.aclose()


async def test_reconciliation_repairs_what_the_provider_issued_and_reports_the_rest(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    fake: FakeProvider,
    app: Any,
    settings: Settings,
    database_url: str,
) -> None:
    # One attempt only, and the provider hangs: the coupon fails although it was issued.
    await configure(db, app, **{"coupons.provider_call_attempts": 1})
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    await claim(client, world.cust, batch)
    fake.set_faults(timeout_ratio=1.0, hang_seconds=2.0)
    fake.webhook_url = None  # no callback either: only reconciliation can tell
    coupon_sender = calls.Sender(db)
    try:
        await settle(db, coupon_sender)
    finally:
        await coupon_sender.aclose()
    fake.set_faults(timeout_ratio=0.0)
    (failed,) = await coupons_of(db, batch)
    assert failed.state == "failed"
    assert fake.issued == 1
    # And one the provider issued that we never asked for.
    async with httpx.AsyncClient() as raw:
        r = await raw.post(
            f"{fake.base_url}/v1/coupons",
            json={"request_no": "stranger", "batch_id": "B1", "customer": "x"},
            headers={"Authorization": "Bearer acme-key"},
        )
        assert r.status_code in (200, 201)
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(settings.data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "ERROR",
    }
    today = datetime.now(UTC).date().isoformat()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "incentive.cli", "coupons", "reconcile", "acme", "--date", today,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    kinds = {d["request_no"]: (d["kind"], d["repaired"]) for d in report["differences"]}
    assert kinds == {
        failed.request_no: ("issued-at-provider", True),
        "stranger": ("unknown-at-ours", False),
    }
    (repaired,) = await coupons_of(db, batch)
    theirs = {c.request_no: c for c in fake.coupons()}
    assert repaired.state == "usable"
    assert repaired.provider_code == theirs[repaired.request_no or ""].code
    assert [to for _, to in await history(db, repaired.id)][-2:] == ["failed", "usable"]
    assert fake.issued == 2  # reconciliation issued nothing


async def test_a_providers_definitive_refusal_fails_the_coupon_with_its_reason_and_no_retry(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    # The provider's operator paused the batch and we were not told (no webhook): our claim
    # is taken, the issue call is refused (409 batch-not-running), which no retry changes.
    await configure(db, app)
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    fake.webhook_url = None
    fake.set_batch("B1", state="paused")
    coupon = (await claim(client, world.cust, batch)).json()
    assert coupon["state"] == "activating"
    coupon_sender = calls.Sender(db)
    try:
        await settle(db, coupon_sender)
    finally:
        await coupon_sender.aclose()
    assert fake.calls("issue") == 1  # a refusal is final: never sent again
    assert fake.issued == 0
    (row,) = await coupons_of(db, batch)
    assert row.state == "failed"
    r = await client.get(f"/api/v1/coupons/{row.id}/transitions", headers=world.op.headers)
    last = r.json()["items"][-1]
    assert (last["from_state"], last["to_state"]) == ("activating", "failed")
    assert (last["actor"], last["actor_role"], last["reason"]) == (
        f"provider:{row.provider_id}",
        "provider",
        "batch-not-running",
    )
    async with db.unit_of_work() as s:
        call = await s.scalar(select(ProviderCall).where(ProviderCall.coupon_id == row.id))
        assert call is not None
        assert (call.state, call.attempts) == ("failed", 1)
