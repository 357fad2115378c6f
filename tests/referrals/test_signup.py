"""``POST /auth/signup``: off by default, on through live config, throttled per address; a
phone (in E.164) or device is kept only as a peppered hash and makes a later self-referral
visible; an invite carried by a sign-up is accepted, a stale one (unknown, expired, of a closed
campaign) is not taken and the account is made all the same."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from incentive.auth.models import User
from incentive.db import Database
from incentive.referrals.models import Referral, ReferralInvite, ReferralSignal
from tests.campaigns.conftest import World, walk
from tests.referrals.conftest import count, invited, mine, referral_campaign, set_config, signup
from tests.referrals.conftest import signups_on as signups_on  # noqa: F401  (fixture)


async def test_signup_is_off_by_default(client: httpx.AsyncClient, db: Database) -> None:
    r = await signup(client, username="nobody")
    assert r.status_code == 403
    assert r.json()["type"].endswith("signup-closed")
    assert await count(db, User, username="nobody") == 0


@pytest.mark.usefixtures("signups_on")
async def test_signup_on_creates_a_customer_who_can_sign_in(
    client: httpx.AsyncClient, db: Database
) -> None:
    r = await signup(client, username="newbie", phone="+86 138-0000-0000", device_id="dev-1")
    assert r.status_code == 201, r.text
    assert r.json()["invite"] is None
    login = await client.post(
        "/api/v1/auth/token", json={"username": "newbie", "password": "correct horse battery"}
    )
    assert login.status_code == 200, login.text
    async with db.unit_of_work() as s:
        user = await s.scalar(select(User).where(User.username == "newbie"))
        assert user is not None
        assert user.role == "customer"
        assert user.password_hash.startswith("$argon2")
        hashes = list(await s.scalars(select(ReferralSignal.hash)))
    assert len(hashes) == 2
    assert all(len(h) == 64 and "138" not in h and "dev-1" not in h for h in hashes)
    taken = await signup(client, username="NEWBIE")
    assert taken.status_code == 409
    weak = await signup(client, username="weakling", password="short")
    assert weak.status_code == 422
    assert weak.json()["errors"][0]["field"] == "password"


async def test_signup_is_throttled_per_address(
    client: httpx.AsyncClient, db: Database, app: Any
) -> None:
    await set_config(db, app, "auth.signup_enabled", True)
    await set_config(db, app, "auth.signup_max_per_address", 2)
    assert (await signup(client)).status_code == 201
    assert (await signup(client)).status_code == 201
    r = await signup(client, username="third")
    assert r.status_code == 429
    assert r.json()["type"].endswith("signup-throttled")
    assert int(r.headers["retry-after"]) >= 1
    assert await count(db, User, username="third") == 0


@pytest.mark.usefixtures("signups_on")
async def test_signup_with_an_invite_accepts_it(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    r = await signup(client, username="friend", invite=token)
    assert r.status_code == 201, r.text
    answer = r.json()["invite"]
    assert (answer["campaign_id"], answer["state"], answer["reason"]) == (
        campaign["id"],
        "accepted",
        None,
    )
    assert [(x["referee"], x["via"]) for x in await mine(client, world.cust)] == [
        ("f***d", "signup")
    ]


@pytest.mark.usefixtures("signups_on")
async def test_a_stale_invite_is_not_taken_and_the_account_is_made(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    campaign = await referral_campaign(client, world)
    expired = (await invited(client, world.cust, campaign["id"]))["token"]
    async with db.unit_of_work() as s:
        await s.execute(
            update(ReferralInvite)
            .where(ReferralInvite.token == expired)
            .values(expires_at=ReferralInvite.created_at)
        )
    paused = await referral_campaign(client, world)
    closed = (await invited(client, world.cust, paused["id"]))["token"]
    await walk(client, world, paused["id"], "paused", owner=world.op)
    for name, token, reason in (
        ("ghost", "nosuchtoken", "invite-unknown"),
        ("late", expired, "invite-expired"),
        ("closed", closed, "referrals-closed"),
    ):
        r = await signup(client, username=name, invite=token, device_id=f"dev-{name}")
        assert r.status_code == 201, r.text
        assert r.json()["invite"] == {
            "referral_id": None,
            "campaign_id": None,
            "state": "not-taken",
            "reason": reason,
        }
        assert await count(db, User, username=name) == 1
    assert await count(db, Referral) == 0
    assert await count(db, ReferralSignal) == 3  # the sign-ups' own hashes were kept


@pytest.mark.usefixtures("signups_on")
async def test_a_signup_refused_otherwise_writes_nothing_even_with_a_good_invite(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    assert (await signup(client, username="taken")).status_code == 201
    r = await signup(client, username="TAKEN", invite=token, device_id="dev-x")
    assert r.status_code == 409, r.text
    assert await count(db, Referral) == 0
    assert await count(db, ReferralSignal) == 0


@pytest.mark.usefixtures("signups_on")
async def test_one_phone_in_any_spelling_is_one_person(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    """``+86 138…``, ``0086 138…`` and ``138…`` (the region's default, CN) hash alike."""
    campaign = await referral_campaign(client, world)
    r = await signup(client, username="referrer", phone="0086 138 0013 8000")
    assert r.status_code == 201, r.text
    login = await client.post(
        "/api/v1/auth/token", json={"username": "referrer", "password": "correct horse battery"}
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    for n, phone in enumerate(("+86 138-0013-8000", "13800138000")):
        made = await client.post(
            f"/api/v1/campaigns/{campaign['id']}/invites",
            json={},
            headers={**headers, "Idempotency-Key": f"k{n}"},
        )
        r = await signup(client, phone=phone, invite=made.json()["token"])
        assert r.status_code == 201, r.text
        assert (r.json()["invite"]["state"], r.json()["invite"]["reason"]) == (
            "rejected",
            "self-referral",
        ), phone
    async with db.unit_of_work() as s:
        phones = set(
            await s.scalars(select(ReferralSignal.hash).where(ReferralSignal.kind == "phone"))
        )
    assert len(phones) == 1


@pytest.mark.usefixtures("signups_on")
async def test_a_phone_that_is_no_number_is_refused_naming_phone(
    client: httpx.AsyncClient, db: Database
) -> None:
    for phone in ("( )-", "---", "123", "+999 1234 5678"):
        r = await signup(client, username="nophone", phone=phone)
        assert r.status_code == 422, (phone, r.text)
        assert r.json()["errors"][0]["field"] == "phone"
    assert await count(db, User, username="nophone") == 0
    assert await count(db, ReferralSignal) == 0


@pytest.mark.usefixtures("signups_on")
async def test_a_display_name_with_bidi_controls_is_refused(
    client: httpx.AsyncClient, db: Database
) -> None:
    for control in ("\u202e", "\u202a", "\u2066", "\u2069"):
        r = await signup(client, username="bidi", display_name=f"ad{control}nim")
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "display_name"
    assert await count(db, User, username="bidi") == 0
    # Right-to-left text itself is welcome.
    r = await signup(client, username="arabic", display_name="\u0645\u0631\u062d\u0628\u0627")
    assert r.status_code == 201, r.text


@pytest.mark.usefixtures("signups_on")
async def test_the_same_phone_behind_two_signups_is_self_referral(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    r = await signup(client, username="referrer", phone="13800000000")
    assert r.status_code == 201, r.text
    login = await client.post(
        "/api/v1/auth/token", json={"username": "referrer", "password": "correct horse battery"}
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    made = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/invites",
        json={},
        headers={**headers, "Idempotency-Key": "k1"},
    )
    assert made.status_code == 201, made.text
    second = await signup(
        client, username="sockpuppet", phone="+86 138 0000 0000"[4:], invite=made.json()["token"]
    )
    assert second.status_code == 201, second.text
    answer = second.json()["invite"]
    assert (answer["state"], answer["reason"]) == ("rejected", "self-referral")
    assert await count(db, Referral, state="rejected") == 1


@pytest.mark.usefixtures("signups_on")
async def test_placeholder_devices_make_no_one_the_same_person(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    """The all-zero device id (iOS without ad tracking) is no identity: strangers sending it
    are not each other's self-referral. (A phone that is no number is refused, above.)"""
    zeros = "00000000-0000-0000-0000-000000000000"
    campaign = await referral_campaign(client, world)
    r = await signup(client, username="referrer", device_id=zeros)
    assert r.status_code == 201, r.text
    login = await client.post(
        "/api/v1/auth/token", json={"username": "referrer", "password": "correct horse battery"}
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    made = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/invites",
        json={"device_id": zeros},
        headers={**headers, "Idempotency-Key": "k1"},
    )
    assert made.status_code == 201, made.text
    stranger = await signup(
        client, username="stranger", device_id=zeros, invite=made.json()["token"]
    )
    assert stranger.status_code == 201, stranger.text
    answer = stranger.json()["invite"]
    assert (answer["state"], answer["reason"]) == ("accepted", None)
    assert await count(db, ReferralSignal) == 0  # nothing identifying was kept


async def test_lowering_the_signup_ceiling_keeps_each_addresses_count(
    client: httpx.AsyncClient, db: Database, app: Any
) -> None:
    """Lowered during an attack, the ceiling applies to what each address already did: no
    fresh budget."""
    await set_config(db, app, "auth.signup_enabled", True)
    await set_config(db, app, "auth.signup_max_per_address", 5)
    for name in ("one", "two", "three"):
        assert (await signup(client, username=name)).status_code == 201
    await set_config(db, app, "auth.signup_max_per_address", 2)
    r = await signup(client, username="four")
    assert r.status_code == 429, r.text
    assert await count(db, User, username="four") == 0
