"""The public link: a visit counted once per visitor and day, then a redirect; statistics of
a campaign and of its sharers."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select

from incentive.db import Database, utcnow
from incentive.sharing import service
from incentive.sharing.models import ShareTouch, ShareVisit
from tests.campaigns.conftest import World
from tests.sharing.conftest import H, rows, shared, shared_campaign, visit


async def test_a_token_redirects_to_the_campaign_and_unknown_ones_are_404(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)
    body = await shared(client, world.ma, campaign["id"])
    # Social apps add their own query parameters to a link: accepted.
    r = await client.get(
        f"/s/{body['token']}?from=singlemessage&isappinstalled=0", follow_redirects=False
    )
    assert r.status_code == 302
    assert r.headers["location"] == f"http://test/api/v1/campaigns/{campaign['id']}"
    cookie = r.headers["set-cookie"]
    for part in ("incentive_visitor=", "HttpOnly", "Path=/s/"):
        assert part in cookie
    assert "samesite=lax" in cookie.lower()
    # The landing page answers a signed-in customer (an active campaign is public to them).
    page = await client.get(r.headers["location"], headers=world.cust.headers)
    assert page.status_code == 200
    missing = await client.get("/s/nosuchtoken", follow_redirects=False)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["type"].endswith("share-not-found")
    bad = await client.get("/s/" + "x" * 33, follow_redirects=False)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "token"
    assert len(await rows(db, ShareVisit)) == 1


async def test_visits_count_once_per_visitor_per_day_and_unique_visitors(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)
    a = await shared(client, world.ma, campaign["id"])
    b = await shared(client, world.op, campaign["id"])
    first = await visit(client, a["token"], **{"user-agent": "phone-1"})
    cookie = first.cookies["incentive_visitor"]
    # The same browser (its cookie), whatever its address or agent says now: once a day.
    again = await visit(
        client, a["token"], **{"user-agent": "phone-1b", "cookie": f"incentive_visitor={cookie}"}
    )
    assert again.status_code == 302
    assert "set-cookie" not in again.headers
    client.cookies.clear()
    # Without cookies, the same address and agent are the same visitor.
    await visit(client, a["token"], **{"user-agent": "phone-1"})
    client.cookies.clear()
    await visit(client, a["token"], **{"user-agent": "phone-2"})  # another visitor
    client.cookies.clear()
    await visit(client, a["token"], world.cust)  # a signed-in customer
    await visit(client, a["token"], world.cust)
    await visit(client, b["token"], world.cust)  # the same visitor on another share
    client.cookies.clear()
    stale = await visit(
        client, b["token"], **{"authorization": "Bearer nonsense", "user-agent": "phone-2"}
    )
    assert stale.status_code == 302  # a bad token on a public link: an anonymous visit
    client.cookies.clear()
    # A new day counts again.
    async with db.unit_of_work() as s:
        _, counted = await service.visit(
            s,
            a["token"],
            f"u:{world.cust.user.id}",
            world.cust.user.id,
            utcnow() + timedelta(days=1),
        )
    assert counted
    stats = (
        await client.get(f"{H}/campaigns/{campaign['id']}/shares/stats", headers=world.ma.headers)
    ).json()
    # a: phone-1, phone-2, cust (x2 days) = 4 visits; b: cust, phone-2 = 2.
    assert (stats["shares"], stats["visits"], stats["unique_visitors"]) == (2, 6, 3)
    assert stats["channels"] == [
        {
            "channel": "wechat",
            "shares": 2,
            "visits": 6,
            "unique_visitors": 3,
            "conversions": 0,
            "coupons": 0,
        }
    ]
    sharers = (
        await client.get(
            f"{H}/campaigns/{campaign['id']}/shares/stats/sharers",
            params={"limit": 1},
            headers=world.op.headers,
        )
    ).json()
    assert len(sharers["items"]) == 1
    assert sharers["next_cursor"]
    rest = (
        await client.get(
            f"{H}/campaigns/{campaign['id']}/shares/stats/sharers",
            params={"limit": 1, "cursor": sharers["next_cursor"]},
            headers=world.op.headers,
        )
    ).json()
    both = {r["sharer_id"]: r for r in sharers["items"] + rest["items"]}
    assert rest["next_cursor"] is None
    ma, op = both[world.ma.user.id], both[world.op.user.id]
    assert (ma["visits"], ma["unique_visitors"], ma["sharer_role"]) == (4, 3, "merchant")
    assert (op["visits"], op["unique_visitors"], op["sharer_role"]) == (2, 2, "operator")
    # Stats are for the campaign's manager and operators.
    for actor, status in ((world.cust, 403), (world.mb, 403)):
        r = await client.get(f"{H}/campaigns/{campaign['id']}/shares/stats", headers=actor.headers)
        assert r.status_code == status


async def test_a_customer_visiting_is_remembered_per_campaign_last_share_wins(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)
    a = await shared(client, world.ma, campaign["id"])
    b = await shared(client, world.op, campaign["id"])
    await visit(client, a["token"], world.cust)
    await visit(client, b["token"], world.cust)
    await visit(client, a["token"], world.cust)  # deduplicated as a visit, yet the latest
    async with db.unit_of_work() as s:
        (touch,) = await s.scalars(select(ShareTouch))
    assert touch.share_id == a["id"]
    assert len(await rows(db, ShareVisit)) == 2
