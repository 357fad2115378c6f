"""``POST /auth/signup``: off by default, on through live config, throttled per address; a
phone or device is kept only as a peppered hash and makes a later self-referral visible; an
invite carried by a sign-up is accepted, an unknown one refuses the sign-up writing nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from incentive.auth.models import User
from incentive.db import Database
from incentive.referrals.models import Referral, ReferralSignal
from tests.campaigns.conftest import World
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
async def test_an_unknown_invite_refuses_the_signup_writing_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    r = await signup(client, username="ghost", invite="nosuchtoken")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "invite"
    assert await count(db, User, username="ghost") == 0
    assert await count(db, ReferralSignal) == 0


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
async def test_placeholder_phones_and_devices_make_no_one_the_same_person(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    """A phone with no digits and the all-zero device id (iOS without ad tracking) are no
    identity: strangers sending them are not each other's self-referral."""
    zeros = "00000000-0000-0000-0000-000000000000"
    campaign = await referral_campaign(client, world)
    r = await signup(client, username="referrer", phone="( )-", device_id=zeros)
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
        client, username="stranger", phone="---", device_id=zeros, invite=made.json()["token"]
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
