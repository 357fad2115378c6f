"""Accepting an invite: the first valid invite wins, one referrer per referee per campaign
under concurrency, and each abuse check refuses its case with its stored reason, visible to
the referrer; a partner's ``signup`` activity accepts too."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select

from incentive.activities.models import ActivityOutcome
from incentive.auth import service as auth_service
from incentive.db import Database
from incentive.referrals.models import Referral, ReferralCount
from tests.activities.conftest import Sender
from tests.campaigns.conftest import World
from tests.referrals.conftest import (
    H,
    accept,
    accepted,
    count,
    customer,
    invited,
    mine,
    referral_campaign,
    set_config,
)


async def test_a_new_customer_accepts_and_the_referrer_sees_it(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    referee = await customer(db, app, "friend")
    body = await accepted(client, referee, token)
    assert (body["state"], body["reason"], body["via"]) == ("accepted", None, "acceptance")
    again = await accepted(client, referee, token)
    assert again["id"] == body["id"]
    assert await count(db, Referral) == 1
    listed = await mine(client, world.cust)
    assert [(r["referee"], r["state"]) for r in listed] == [("f***d", "accepted")]  # masked
    invites = await client.get(f"{H}/me/invites", headers=world.cust.headers)
    assert [i["token"] for i in invites.json()["items"]] == [token]
    assert await mine(client, referee) == []


async def test_existing_account_is_rejected_with_its_reason(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    old = await customer(db, app, "old")
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    body = await accepted(client, old, token)
    assert (body["state"], body["reason"]) == ("rejected", "existing-account")
    assert [(r["referee"], r["state"], r["reason"]) for r in await mine(client, world.cust)] == [
        ("o***d", "rejected", "existing-account")
    ]
    # A rejection counts nothing against the referrer's caps (only the invite was counted).
    async with db.unit_of_work() as s:
        counted = await s.scalars(select(ReferralCount.subject))
        assert [c.split(":")[0] for c in counted] == ["invites"]


async def test_self_referral_same_user_device_and_instrument(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    own = (await invited(client, world.cust, campaign["id"]))["token"]
    # The referrer is a customer; accepting their own invite is self-referral, whatever age.
    body = await accepted(client, world.cust, own)
    assert (body["state"], body["reason"]) == ("rejected", "self-referral")
    device = (await invited(client, world.cust, campaign["id"], device_id="phone-123"))["token"]
    body = await accepted(client, await customer(db, app), device, device_id="phone-123")
    assert (body["state"], body["reason"]) == ("rejected", "self-referral")
    card = "c2hhMjU2OmNhcmQtNDI0Mg"
    paid = (await invited(client, world.cust, campaign["id"], payment_instrument_hash=card))[
        "token"
    ]
    body = await accepted(client, await customer(db, app), paid, payment_instrument_hash=card)
    assert (body["state"], body["reason"]) == ("rejected", "self-referral")
    # Another device is no self-referral.
    other = (await invited(client, world.cust, campaign["id"]))["token"]
    body = await accepted(client, await customer(db, app), other, device_id="phone-999")
    assert body["state"] == "accepted"


async def test_ring_is_rejected(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    a = world.cust
    for_b = (await invited(client, a, campaign["id"]))["token"]
    b = await customer(db, app, "b")
    assert (await accepted(client, b, for_b))["state"] == "accepted"
    for_c = (await invited(client, b, campaign["id"]))["token"]
    c = await customer(db, app, "c")
    assert (await accepted(client, c, for_c))["state"] == "accepted"
    # b invites a (A→B→A); c invites a (A→B→C→A).
    for back in (b, c):
        token = (await invited(client, back, campaign["id"]))["token"]
        body = await accepted(client, a, token)
        assert (body["state"], body["reason"]) == ("rejected", "ring")


async def test_first_valid_invite_wins(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    other = await customer(db, app, "other-referrer")
    first = (await invited(client, world.cust, campaign["id"]))["token"]
    second = (await invited(client, other, campaign["id"]))["token"]
    elsewhere = await referral_campaign(client, world)
    token = (await invited(client, other, elsewhere["id"]))["token"]
    referee = await customer(db, app)
    assert (await accepted(client, referee, first))["state"] == "accepted"
    late = await accepted(client, referee, second)
    assert (late["state"], late["reason"]) == ("rejected", "already-referred")
    # Another campaign is another race.
    assert (await accepted(client, referee, token))["state"] == "accepted"


async def test_one_referrer_per_referee_under_20_concurrent_acceptances(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    referrers = [await customer(db, app) for _ in range(20)]
    tokens = [(await invited(client, r, campaign["id"]))["token"] for r in referrers]
    referee = await customer(db, app)
    answers = await asyncio.gather(*(accept(client, referee, t) for t in tokens))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    states = sorted((a.json()["state"], a.json()["reason"]) for a in answers)
    assert states.count(("accepted", None)) == 1
    assert states.count(("rejected", "already-referred")) == 19
    assert await count(db, Referral, state="accepted") == 1
    # The losers counted nothing: one referrer's cap moved, once.
    async with db.unit_of_work() as s:
        counted = await s.scalars(
            select(ReferralCount.n).where(ReferralCount.subject.startswith("referrer:"))
        )
        assert list(counted) == [1]
    # The same invite 20 times at once: one referral.
    again = await customer(db, app)
    token = (await invited(client, referrers[0], campaign["id"]))["token"]
    answers = await asyncio.gather(*(accept(client, again, token) for _ in range(20)))
    assert len({a.json()["id"] for a in answers}) == 1


async def test_too_many_referees_from_one_address(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    await set_config(db, app, "referrals.max_referees_per_address_hour", 2)
    campaign = await referral_campaign(client, world, max_referrals_per_user=100)
    states = []
    for _ in range(3):
        token = (await invited(client, world.cust, campaign["id"]))["token"]
        body = await accepted(client, await customer(db, app), token)
        states.append((body["state"], body["reason"]))
    assert states == [("accepted", None), ("accepted", None), ("rejected", "address-burst")]


async def test_a_partner_signup_activity_accepts_the_invite(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    async with db.unit_of_work() as s:
        partner, key = await auth_service.create_partner(s, "SHOP", "Shop app")
    sender = Sender(partner.id, key)
    campaign = await referral_campaign(client, world)
    other = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    referee = await customer(db, app, "partner-friend")
    r = await client.post(
        f"{H}/activities",
        json={
            "id": "signup-1",
            "type": "signup",
            "occurred_at": datetime.now(UTC).isoformat(),
            "customer": referee.user.id,
            "attributes": {"invite": token},
        },
        headers=sender.headers,
    )
    assert r.status_code == 201, r.text
    async with db.unit_of_work() as s:
        outcomes = {
            o.campaign_id: (o.status, o.reason) for o in await s.scalars(select(ActivityOutcome))
        }
    assert outcomes[campaign["id"]] == ("refused", "referral-accepted")
    assert outcomes[other["id"]] == ("refused", "other-campaign")
    listed = await mine(client, world.cust)
    assert [(x["referee"], x["state"], x["via"]) for x in listed] == [
        ("p***d", "accepted", "activity")
    ]
