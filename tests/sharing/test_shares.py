"""Shares: who may share, the token, link and QR code, the sharer coupon (once per sharer
and campaign under any concurrency, the share kept when no coupon can be given)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from incentive.db import Database
from incentive.sharing.models import Share, ShareSharer
from tests.campaigns.conftest import World, walk
from tests.coupons.conftest import batch_row
from tests.sharing.conftest import (
    H,
    count,
    coupons_of,
    draft,
    put_sharing,
    rows,
    share,
    shared_campaign,
)


async def test_a_customer_shares_and_gets_one_coupon_with_a_token_link_and_qr(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign, batch = await shared_campaign(client, world)
    assert batch is not None
    r = await share(client, world.cust, campaign["id"], "moments", key="s1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert 16 <= len(body["token"]) <= 32
    assert body["link"] == f"http://test/s/{body['token']}"
    assert body["qr"] == f"/api/v1/shares/{body['token']}/qr"
    assert body["channel"] == "moments"
    assert body["coupon_refusal"] is None
    (coupon,) = await coupons_of(db, batch, world.cust.user.id)
    assert body["coupon_id"] == coupon.id
    # The same key: the first share again, nothing new.
    again = await share(client, world.cust, campaign["id"], "moments", key="s1")
    assert again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == body
    assert await count(db, Share) == 1
    # Another share: stored, no second coupon (one per sharer by default).
    second = await share(client, world.cust, campaign["id"], "moments", key="s2")
    assert second.status_code == 201
    assert second.json()["token"] != body["token"]
    assert second.json()["coupon_refusal"] == "sharer-limit-reached"
    assert len(await coupons_of(db, batch, world.cust.user.id)) == 1
    (sharer,) = await rows(db, ShareSharer)
    assert (sharer.shares, sharer.coupons) == (2, 1)
    mine = await client.get(f"{H}/me/shares", headers=world.cust.headers)
    assert [s["token"] for s in mine.json()["items"]] == [second.json()["token"], body["token"]]


async def test_merchant_staff_and_operators_share_without_a_coupon_other_merchants_not(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign, batch = await shared_campaign(client, world)
    for actor in (world.ma, world.op):
        r = await share(client, actor, campaign["id"])
        assert r.status_code == 201, r.text
        assert r.json()["coupon_id"] is None
        assert r.json()["coupon_refusal"] == "not-a-customer"
    refused = await share(client, world.mb, campaign["id"])
    assert refused.status_code == 403
    assert await count(db, Share) == 2


async def test_a_coupon_that_cannot_be_given_leaves_the_share_and_says_why(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    from tests.coupons.conftest import customers

    campaign, batch = await shared_campaign(client, world, quantity=1, batch_limit=1)
    assert batch is not None
    first, second = await customers(db, app, 2)
    assert (await share(client, first, campaign["id"])).json()["coupon_id"] is not None
    r = await share(client, second, campaign["id"])
    assert r.status_code == 201, r.text
    assert r.json()["coupon_id"] is None
    assert r.json()["coupon_refusal"] == "out-of-stock"
    assert await count(db, Share) == 2
    sharers = {s.sharer_id: (s.shares, s.coupons) for s in await rows(db, ShareSharer)}
    # The refused coupon's count rolled back with its savepoint.
    assert sharers == {first.user.id: (1, 1), second.user.id: (1, 0)}
    assert (await batch_row(db, batch)).stock == 0


async def test_only_an_active_campaign_with_sharing_enabled_takes_shares(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    off, _ = await shared_campaign(client, world, coupons=False)
    campaign = await draft(client, world)
    assert (await put_sharing(client, world.ma, campaign["id"], enabled=False)).status_code == 200
    await walk(client, world, campaign["id"], "pending_review", "approved", "active")
    r = await share(client, world.cust, campaign["id"])
    assert (r.status_code, r.json()["type"].split("/")[-1]) == (409, "sharing-off")
    assert r.json()["reason"] == "disabled"
    await walk(client, world, off["id"], "paused")
    r = await share(client, world.ma, off["id"])
    assert (r.status_code, r.json()["reason"]) == (409, "not-active")
    # A customer does not see a paused campaign: as absent.
    assert (await share(client, world.cust, off["id"])).status_code == 404
    bad = await client.post(
        f"{H}/campaigns/{campaign['id']}/shares",
        json={"channel": "carrier-pigeon"},
        headers={**world.cust.headers, "Idempotency-Key": "bad"},
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "channel"
    assert await count(db, Share) == 0


@pytest.mark.parametrize("limit", [1, 3])
async def test_fifty_concurrent_shares_by_one_customer_give_exactly_the_limit(
    client: httpx.AsyncClient, db: Database, world: World, limit: int
) -> None:
    campaign, batch = await shared_campaign(client, world, coupons_per_sharer=limit)
    assert batch is not None
    answers = await asyncio.gather(*(share(client, world.cust, campaign["id"]) for _ in range(50)))
    assert [a.status_code for a in answers] == [201] * 50
    given = [a.json()["coupon_id"] for a in answers if a.json()["coupon_id"]]
    assert len(given) == limit
    assert len(await coupons_of(db, batch, world.cust.user.id)) == limit
    assert await count(db, Share) == 50
    (sharer,) = await rows(db, ShareSharer)
    assert (sharer.shares, sharer.coupons) == (50, limit)
    refusals = {a.json()["coupon_refusal"] for a in answers if not a.json()["coupon_id"]}
    assert refusals == {"sharer-limit-reached"}


async def test_the_qr_code_reads_back_as_the_link(
    client: httpx.AsyncClient, world: World, tmp_path: Any
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)
    body = (await share(client, world.cust, campaign["id"])).json()
    for params, kind in (({}, "png"), ({"size": 4, "ecc": "h"}, "png"), ({"format": "svg"}, "svg")):
        r = await client.get(body["qr"], params=params, headers=world.mb.headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith({"png": "image/png", "svg": "image/svg"}[kind])
        if kind != "png":
            assert b"<svg" in r.content
            continue
        path = tmp_path / "share.png"
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
    for params, field in (
        ({"ecc": "x"}, "ecc"),
        ({"size": 0}, "size"),
        ({"format": "gif"}, "format"),
    ):
        r = await client.get(body["qr"], params=params, headers=world.cust.headers)
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == field
    missing = await client.get(f"{H}/shares/nosuchtoken/qr", headers=world.cust.headers)
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("share-not-found")
