"""Invites: token, link and QR code (read back with zbarimg), the public page ``/i/{token}``,
and who may refer (role, account age, caps); the campaigns a caller may refer in."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from incentive.db import Database
from incentive.referrals.models import ReferralInvite
from tests.campaigns.conftest import World
from tests.referrals.conftest import (
    H,
    accept,
    accepted,
    backdate,
    count,
    customer,
    invite,
    invited,
    referral_campaign,
)


async def test_invite_link_and_qr_decode_to_the_link_that_opens_the_invite(
    client: httpx.AsyncClient, world: World, db: Database, tmp_path: Path
) -> None:
    campaign = await referral_campaign(client, world, task_title="Bring a friend")
    body = await invited(client, world.cust, campaign["id"])
    token = body["token"]
    assert 16 <= len(token) <= 32
    assert token.replace("-", "").replace("_", "").isalnum()
    assert body["link"] == f"http://test/i/{token}"
    for fmt, media in (("png", "image/png"), ("svg", "image/svg+xml")):
        r = await client.get(
            body["qr"], params={"format": fmt, "size": 6, "ecc": "q"}, headers=world.mb.headers
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media
        if fmt == "svg":
            assert b"<svg" in r.content
            continue
        path = tmp_path / "invite.png"
        path.write_bytes(r.content)
        try:
            zbar = await asyncio.create_subprocess_exec(
                "zbarimg", "--raw", "-q", str(path), stdout=asyncio.subprocess.PIPE
            )
        except FileNotFoundError:
            pytest.fail("zbarimg (zbar-tools) is needed to read the QR code back")
        out, _ = await zbar.communicate()
        assert zbar.returncode == 0
        assert out.decode().strip() == body["link"]
    # The link works, for anyone (no bearer), and says only the campaign and the inviter.
    opened = await client.get(body["link"].removeprefix("http://test"), params={"from": "qr"})
    assert opened.status_code == 200, opened.text
    page = opened.json()
    assert page["campaign_name"] == campaign["name"]
    # no display name of their own: the login name masked, never shown as it is
    assert page["inviter"] == "c***t"
    assert page["task_title"] == "Bring a friend"
    assert world.cust.user.id not in opened.text
    for params, field in (
        ({"ecc": "x"}, "ecc"),
        ({"size": 0}, "size"),
        ({"format": "gif"}, "format"),
    ):
        r = await client.get(body["qr"], params=params, headers=world.cust.headers)
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == field
    missing = await client.get(f"{H}/invites/nosuchtoken/qr", headers=world.cust.headers)
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("invite-not-found")
    unknown = await client.get("/i/nosuchtoken")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert "/i/{token}" not in (await client.get("/openapi.json")).json()["paths"]


async def test_an_expired_invite_is_a_404_everywhere(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    async with db.unit_of_work() as s:
        await s.execute(
            update(ReferralInvite)
            .where(ReferralInvite.token == token)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert (await client.get(f"/i/{token}")).status_code == 404
    referee = await customer(db, app)
    r = await accept(client, referee, token)
    assert r.status_code == 404
    assert r.json()["reason"] == "expired"
    assert await count(db, ReferralInvite) == 1


async def test_a_link_too_long_for_a_qr_code_is_a_422(
    client: httpx.AsyncClient, world: World
) -> None:
    campaign = await referral_campaign(client, world)
    body = await invited(client, world.cust, campaign["id"])
    r = await client.get(
        body["qr"], params={"ecc": "h"}, headers={**world.cust.headers, "Host": "h" * 3000}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Host"


async def test_a_retried_invite_answers_the_first(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    campaign = await referral_campaign(client, world)
    first = await invite(client, world.cust, campaign["id"], key="same")
    again = await invite(client, world.cust, campaign["id"], key="same")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["token"] == first.json()["token"]
    assert await count(db, ReferralInvite) == 1


async def test_role_refused_with_reason_writing_nothing(
    client: httpx.AsyncClient, world: World, db: Database
) -> None:
    campaign = await referral_campaign(client, world)
    for actor in (world.ma, world.op):
        r = await invite(client, actor, campaign["id"])
        assert r.status_code == 403, r.text
        assert r.json()["reason"] == "role"
        assert r.json()["rule"] == "rules.referrer_roles"
    assert await count(db, ReferralInvite) == 0
    staff = await referral_campaign(client, world, referrer_roles=["customer", "merchant"])
    assert (await invite(client, world.ma, staff["id"])).status_code == 201
    assert (await invite(client, world.op, staff["id"])).status_code == 403
    # Not a referral campaign, or not active: 409 referrals-closed.
    rebate = await referral_campaign(client, world)
    r = await client.post(
        f"{H}/campaigns/{rebate['id']}/transitions", json={"to": "paused"}, headers=world.op.headers
    )
    assert r.status_code == 200, r.text
    closed = await invite(client, world.cust, rebate["id"])
    assert closed.status_code in (404, 409)


async def test_account_age(client: httpx.AsyncClient, world: World, db: Database) -> None:
    campaign = await referral_campaign(client, world, min_account_age_days=30)
    r = await invite(client, world.cust, campaign["id"])
    assert r.status_code == 403
    assert r.json()["reason"] == "account-age"
    listed = await client.get(f"{H}/me/referral-campaigns", headers=world.cust.headers)
    assert listed.json()["items"] == []
    await backdate(db, world.cust.user.id, 31)
    assert (await invite(client, world.cust, campaign["id"])).status_code == 201
    listed = await client.get(f"{H}/me/referral-campaigns", headers=world.cust.headers)
    assert [c["campaign_id"] for c in listed.json()["items"]] == [campaign["id"]]


async def test_campaign_cap_refuses_new_invites_and_late_acceptances(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world, max_referrals_per_user=1)
    first = (await invited(client, world.cust, campaign["id"]))["token"]
    second = (await invited(client, world.cust, campaign["id"]))["token"]
    assert (await accepted(client, await customer(db, app), first))["state"] == "accepted"
    late = await accepted(client, await customer(db, app), second)
    assert (late["state"], late["reason"]) == ("rejected", "referrer-cap")
    r = await invite(client, world.cust, campaign["id"])
    assert r.status_code == 403
    assert r.json()["reason"] == "campaign-cap"
    listed = await client.get(f"{H}/me/referral-campaigns", headers=world.cust.headers)
    assert listed.json()["items"] == []


async def test_daily_cap_holds_under_20_concurrent_acceptances(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(
        client, world, max_referrals_per_user=100, max_referrals_per_day=3
    )
    tokens = [(await invited(client, world.cust, campaign["id"]))["token"] for _ in range(20)]
    referees = [await customer(db, app) for _ in range(20)]
    answers = await asyncio.gather(
        *(accept(client, r, t) for r, t in zip(referees, tokens, strict=True))
    )
    states = sorted((a.json()["state"], a.json()["reason"]) for a in answers)
    assert states.count(("accepted", None)) == 3
    assert states.count(("rejected", "referrer-cap")) == 17
    r = await invite(client, world.cust, campaign["id"])
    assert r.status_code == 403
    assert r.json()["reason"] == "daily-cap"


async def test_referral_campaigns_page(client: httpx.AsyncClient, world: World) -> None:
    ids = [(await referral_campaign(client, world))["id"] for _ in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await client.get(
            f"{H}/me/referral-campaigns", params=params, headers=world.cust.headers
        )
        assert r.status_code == 200, r.text
        seen += [c["campaign_id"] for c in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids)
    staff = await client.get(f"{H}/me/referral-campaigns", headers=world.ma.headers)
    assert staff.json()["items"] == []
