"""A third-party coupon given as a reward whose provider is down for good: the coupon fails,
``coupon.failed`` reaches ``rewards.fall_back``, the unit goes back to the reward's stock and
the grant walks on to the next reward (or ends ``failed`` when nothing is left). Workers are
not embedded: the test sends the provider calls and relays the outbox itself, and reads the
outcome from the tables, the ledger, the stock API and the provider's own counts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from incentive.coupons import calls, reconcile
from incentive.db import Database, utcnow
from incentive.events import Event
from incentive.events.backends.inprocess import InProcessTransport
from incentive.events.models import OutboxEvent
from incentive.events.relay import Relay
from incentive.rewards.kind import fall_back
from incentive.rewards.models import RewardGrant
from incentive.settings import Settings
from incentive.stock.holds import settled
from tests.campaigns.conftest import World
from tests.coupons.conftest import coupons_of
from tests.coupons.fake_provider import FakeProvider
from tests.coupons.test_providers import configure, provider_campaign, register, settle
from tests.rewards.conftest import balance, claim, left, option, reward_campaign


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"embedded_worker": False})


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(credentials="acme-key") as provider:
        yield provider


def third_party(code: str, batch_id: str, stock: int) -> dict[str, Any]:
    return {
        "code": code,
        "type": "coupon",
        "delivery": "third_party",
        "batch_id": batch_id,
        "stock": stock,
    }


async def provider_down_campaign(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    fake: FakeProvider,
    app: Any,
    fallback_stock: int,
) -> tuple[str, str]:
    """A reward campaign [T: acme's coupon (stock 5), P: 30 points] with the provider down;
    returns (campaign id, coupon batch id)."""
    await configure(db, app, **{"coupons.provider_call_attempts": 2})
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    chain = [third_party("T", batch, 5), option("P", amount=30, stock=fallback_stock)]
    campaign = await reward_campaign(client, db, world, chain)
    fake.set_faults(fail_ratio=1.0)  # every call: 503, nothing done
    return campaign["id"], batch


async def relay(db: Database) -> None:
    """Deliver every due outbox event to its subscribers, then let give-backs run."""
    await Relay(db, InProcessTransport(db), retry_base_seconds=0.01).drain()
    await settled()


async def grant_row(db: Database, grant_id: str) -> RewardGrant:
    async with db.unit_of_work() as s:
        grant = await s.get(RewardGrant, grant_id)
        assert grant is not None
        return grant


async def failed_events(db: Database) -> list[dict[str, Any]]:
    async with db.unit_of_work() as s:
        rows = await s.scalars(
            select(OutboxEvent.payload).where(OutboxEvent.topic == "coupon.failed")
        )
        return [dict(p) for p in rows]


async def send_calls(db: Database) -> None:
    sender = calls.Sender(db)
    try:
        await settle(db, sender, seconds=15)
    finally:
        await sender.aclose()


async def test_a_provider_down_for_good_falls_back_to_the_next_reward_and_its_unit_returns(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    campaign, batch = await provider_down_campaign(client, db, world, fake, app, 10)
    r = await claim(client, world.cust.headers, campaign)
    assert r.status_code == 201, r.text
    given = r.json()
    assert (given["reward"], given["state"]) == ("T", "delivering")
    assert await left(client, world.op.headers, campaign) == {"T": 4, "P": 10}

    await send_calls(db)
    (coupon,) = await coupons_of(db, batch)
    assert coupon.id == given["delivery_ref"]
    assert coupon.state == "failed"
    assert fake.issued == 0  # the provider issued nothing
    assert fake.calls("issue") >= 1
    assert [e["coupon_id"] for e in await failed_events(db)] == [coupon.id]
    # Before the event is handled the customer still holds T.
    assert (await grant_row(db, given["id"])).reward_code == "T"

    await relay(db)
    grant = await grant_row(db, given["id"])
    assert (grant.reward_code, grant.state, grant.amount) == ("P", "granted", 30)
    assert [(s["code"], s["result"], s["reason"]) for s in grant.chain] == [
        ("T", "given", None),
        ("T", "failed", "delivery-failed"),
        ("P", "given", None),
    ]
    assert grant.delivery_ref is not None
    assert grant.delivery_ref != coupon.id
    assert await balance(db, "user", world.cust.user.id) == 30
    # T's unit is back in its stock; P gave one.
    assert await left(client, world.op.headers, campaign) == {"T": 5, "P": 9}
    seen = await client.get(f"/api/v1/campaigns/{campaign}/rewards", headers=world.op.headers)
    held = {x["code"]: x["held"] for x in seen.json()["rewards"]}
    assert held == {"T": 0, "P": 1}

    # The event again, past the relay's guard (another subscriber name, a replayed row):
    # the grant no longer holds the coupon, so nothing changes.
    event = Event("again", "coupon.failed", coupon.id, {"coupon_id": coupon.id}, utcnow())
    async with db.unit_of_work() as s:
        await fall_back(s, event)
    await settled()
    assert (await grant_row(db, given["id"])).chain == grant.chain
    assert await balance(db, "user", world.cust.user.id) == 30
    assert await left(client, world.op.headers, campaign) == {"T": 5, "P": 9}


async def test_a_provider_down_with_nothing_after_it_ends_the_grant_failed(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    campaign, batch = await provider_down_campaign(client, db, world, fake, app, 0)
    r = await claim(client, world.cust.headers, campaign)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "delivering"
    await send_calls(db)
    await relay(db)
    grant = await grant_row(db, r.json()["id"])
    assert (grant.reward_code, grant.state, grant.amount) == (None, "failed", 0)
    assert grant.delivery_ref is None
    assert grant.takes == []
    assert [(s["code"], s["result"], s["reason"]) for s in grant.chain] == [
        ("T", "given", None),
        ("T", "failed", "delivery-failed"),
        ("P", "skipped", "out-of-stock"),
    ]
    assert await balance(db, "user", world.cust.user.id) == 0
    assert await left(client, world.op.headers, campaign) == {"T": 5, "P": 0}
    assert {c.state for c in await coupons_of(db, batch)} == {"failed"}
    mine = await client.get("/api/v1/me/rewards", headers=world.cust.headers)
    assert [(g["reward"], g["state"]) for g in mine.json()["items"]] == [(None, "failed")]


async def test_a_third_party_reward_whose_provider_answers_is_delivered_usable_in_the_wallet(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    campaign, batch = await provider_down_campaign(client, db, world, fake, app, 10)
    fake.set_faults(fail_ratio=0.0)  # the provider is up
    r = await claim(client, world.cust.headers, campaign)
    assert r.status_code == 201, r.text
    given = r.json()
    assert (given["reward"], given["state"]) == ("T", "delivering")
    await send_calls(db)
    await relay(db)
    (coupon,) = await coupons_of(db, batch)
    assert (coupon.id, coupon.customer_id, coupon.state) == (
        given["delivery_ref"],
        world.cust.user.id,
        "usable",
    )
    assert fake.issued == 1
    assert coupon.provider_code == fake.coupons()[0].code
    grant = await grant_row(db, given["id"])
    assert (grant.reward_code, grant.delivery_ref, grant.state) == ("T", coupon.id, "delivered")
    mine = await client.get("/api/v1/me/rewards", headers=world.cust.headers)
    assert [(g["reward"], g["state"]) for g in mine.json()["items"]] == [("T", "delivered")]
    assert await failed_events(db) == []
    assert await left(client, world.op.headers, campaign) == {"T": 4, "P": 10}
    assert await balance(db, "user", world.cust.user.id) == 0


async def test_a_coupon_issued_after_its_grant_fell_back_is_revoked_and_the_fallback_stands(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    """The issue call times out each time, so we give up and fall back to the points; the
    provider had issued it, and reconciliation brings its word: the customer must not hold
    both, nor the coupon reward be given beyond its stock — the late coupon is revoked, at
    the provider too."""
    campaign, batch = await provider_down_campaign(client, db, world, fake, app, 10)
    fake.set_faults(fail_ratio=0.0, timeout_ratio=1.0, hang_seconds=2.0)
    r = await claim(client, world.cust.headers, campaign)
    assert r.status_code == 201, r.text
    await send_calls(db)
    await relay(db)
    grant = await grant_row(db, r.json()["id"])
    assert grant.reward_code == "P"
    assert await balance(db, "user", world.cust.user.id) == 30
    fake.set_faults(timeout_ratio=0.0)
    report = await reconcile.reconcile(db, "acme", datetime.now(UTC).date())
    assert [d.repaired for d in report.differences] == [True]
    await relay(db)
    await send_calls(db)
    (coupon,) = await coupons_of(db, batch)
    assert coupon.state == "revoked"
    assert fake.revoked == 1  # the provider was told
    grant = await grant_row(db, r.json()["id"])
    assert (grant.reward_code, grant.state) == ("P", "granted")
    assert await balance(db, "user", world.cust.user.id) == 30
