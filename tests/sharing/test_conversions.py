"""Conversions: an activity attributed to the share its customer last visited within the
window, or to the share its `attributes.share` names; never to the sharer's own share."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update

from incentive.db import Database, utcnow
from incentive.sharing.models import ShareConversion, ShareTouch
from tests.activities.conftest import Sender
from tests.campaigns.conftest import World, create, walk
from tests.coupons.conftest import claim, customers
from tests.sharing.conftest import H, pay, put_sharing, rows, shared, shared_campaign, visit


async def _conversions(db: Database) -> list[tuple[str, str, str]]:
    found = await rows(db, ShareConversion)
    return sorted((c.share_id, c.customer_id, c.via) for c in found)


async def test_the_last_share_visited_wins_within_the_window(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False, attribution_hours=24)
    alice, bob = await customers(db, app, 2, prefix="sharer")
    a = await shared(client, alice, campaign["id"])
    b = await shared(client, bob, campaign["id"])
    buyer = world.cust
    await visit(client, a["token"], buyer)
    await visit(client, b["token"], buyer)
    await pay(client, sender, buyer, world.merchant_a)
    assert await _conversions(db) == [(b["id"], buyer.user.id, "visit")]
    # Not a counted type (signup): nothing; refunds never convert.
    await pay(client, sender, buyer, world.merchant_a, type="signup")
    assert len(await _conversions(db)) == 1
    # Outside the window (the visit 25 hours before the payment): no conversion.
    await pay(client, sender, buyer, world.merchant_a, occurred_at=utcnow() + timedelta(hours=25))
    assert len(await _conversions(db)) == 1
    # Queued evaluation converts too (once).
    r = await client.post(
        f"{H}/activities",
        json={
            "id": "queued-1",
            "type": "payment",
            "occurred_at": utcnow().isoformat(),
            "customer": buyer.user.id,
            "merchant": world.merchant_a,
            "amount_fen": 100,
        },
        headers={**sender.headers, "Prefer": "respond-async"},
    )
    assert r.status_code == 202, r.text
    stats: dict[str, Any] = {}
    for _ in range(100):
        stats = (
            await client.get(
                f"{H}/campaigns/{campaign['id']}/shares/stats", headers=world.ma.headers
            )
        ).json()
        if stats["conversions"] == 2:
            break
        await asyncio.sleep(0.05)
    assert stats["conversions"] == 2
    sharers = (
        await client.get(
            f"{H}/campaigns/{campaign['id']}/shares/stats/sharers", headers=world.ma.headers
        )
    ).json()
    by_sharer = {s["sharer_id"]: s["conversions"] for s in sharers["items"]}
    assert by_sharer == {alice.user.id: 0, bob.user.id: 2}


async def test_a_visit_older_than_the_window_does_not_convert(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False, attribution_hours=2)
    (alice,) = await customers(db, app, 1, prefix="sharer")
    a = await shared(client, alice, campaign["id"])
    await visit(client, a["token"], world.cust)
    async with db.unit_of_work() as s:
        await s.execute(
            update(ShareTouch).values(visited_at=utcnow() - timedelta(hours=2, minutes=1))
        )
    await pay(client, sender, world.cust, world.merchant_a)
    assert await _conversions(db) == []
    await visit(client, a["token"], world.cust)  # deduplicated as a visit, touch renewed
    await pay(client, sender, world.cust, world.merchant_a)
    assert await _conversions(db) == [(a["id"], world.cust.user.id, "visit")]


async def test_the_share_named_by_the_activity_takes_precedence(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)
    alice, bob = await customers(db, app, 2, prefix="sharer")
    a = await shared(client, alice, campaign["id"])
    b = await shared(client, bob, campaign["id"])
    await visit(client, b["token"], world.cust)
    await pay(client, sender, world.cust, world.merchant_a, share=a["token"])
    assert await _conversions(db) == [(a["id"], world.cust.user.id, "token")]
    # An unknown token: the last visit still counts.
    await pay(client, sender, world.cust, world.merchant_a, share="nosuchtoken")
    assert sorted(c[2] for c in await _conversions(db)) == ["token", "visit"]


async def test_a_sharer_never_converts_for_their_own_share(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)
    (alice,) = await customers(db, app, 1, prefix="sharer")
    a = await shared(client, alice, campaign["id"])
    await visit(client, a["token"], alice)
    await pay(client, sender, alice, world.merchant_a)
    await pay(client, sender, alice, world.merchant_a, share=a["token"])
    assert await _conversions(db) == []
    assert await rows(db, ShareTouch) == []
    stats = (
        await client.get(f"{H}/campaigns/{campaign['id']}/shares/stats", headers=world.op.headers)
    ).json()
    assert (stats["visits"], stats["conversions"]) == (1, 0)


async def test_activities_of_customers_who_visited_nothing_cost_one_query(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    """The observer's price when there is nothing to attribute: one query for the batch."""
    from sqlalchemy import event

    from incentive.activities.observers import notify
    from incentive.campaigns.kinds import ActivityFacts

    statements: list[str] = []
    mine: list[Any] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # This session's statements only: the relay works on other connections meanwhile.
        if conn in mine and not statement.startswith("BEGIN"):
            statements.append(statement)

    facts = [
        ActivityFacts(i, "p", f"x{i}", "payment", utcnow(), f"c{i}", None, None, 1, None, {})
        for i in range(200)
    ]
    async with db.unit_of_work() as s:
        mine.append((await s.connection()).sync_connection)
        event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
        try:
            await notify(s, facts)
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 1, statements
    assert "share_touches" in statements[0]


async def test_a_named_share_converts_only_within_the_window_after_it_was_made(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False, attribution_hours=2)
    (alice,) = await customers(db, app, 1, prefix="sharer")
    a = await shared(client, alice, campaign["id"])
    later = utcnow() + timedelta(hours=2, minutes=5)
    await pay(client, sender, world.cust, world.merchant_a, share=a["token"], occurred_at=later)
    assert await _conversions(db) == []
    await pay(client, sender, world.cust, world.merchant_a, share=a["token"])
    assert await _conversions(db) == [(a["id"], world.cust.user.id, "token")]


async def test_a_coupon_claimed_here_after_a_visit_converts_for_its_campaign(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    campaign = await create(
        client, world.ma, kind="coupon", rules={"face_value_fen": 500, "quantity": 100}
    )
    r = await put_sharing(
        client, world.ma, campaign["id"], enabled=True, conversion_types=["claim"]
    )
    assert r.status_code == 200, r.text
    await walk(client, world, campaign["id"], "pending_review", "active")
    batches = await client.get(
        f"{H}/coupon-batches", params={"campaign_id": campaign["id"]}, headers=world.op.headers
    )
    (batch,) = batches.json()["items"]
    alice, bob = await customers(db, app, 2, prefix="sharer")
    a = await shared(client, alice, campaign["id"])
    await visit(client, a["token"], world.cust)
    await visit(client, a["token"], alice)  # her own visit is no touch
    for claimant in (world.cust, alice, bob):
        assert (await claim(client, claimant, batch["id"])).status_code == 201
    found = await rows(db, ShareConversion)
    assert [(c.source, c.share_id, c.customer_id, c.type) for c in found] == [
        ("claim", a["id"], world.cust.user.id, "claim")
    ]
    stats = await client.get(
        f"{H}/campaigns/{campaign['id']}/shares/stats", headers=world.ma.headers
    )
    assert stats.json()["conversions"] == 1
