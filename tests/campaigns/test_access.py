"""Who sees and changes which campaign; listing filters and pagination."""

from __future__ import annotations

import httpx

from tests.campaigns.conftest import World, create, move, walk


async def test_merchant_cannot_touch_another_merchants_campaign(
    client: httpx.AsyncClient, world: World
) -> None:
    draft = await create(client, world.ma)
    url = f"/api/v1/campaigns/{draft['id']}"
    # An unpublished campaign of another merchant does not exist for them.
    assert (await client.get(url, headers=world.mb.headers)).status_code == 404
    r = await client.patch(url, json={"name": "mine now"}, headers=world.mb.headers)
    assert r.status_code == 404
    assert (await move(client, world.mb, draft["id"], "pending_review")).status_code == 404
    assert (await client.get(f"{url}/history", headers=world.mb.headers)).status_code == 404
    assert (await client.get(f"{url}/budget", headers=world.mb.headers)).status_code == 404

    # An active one is visible to them, but still not theirs to change.
    await walk(client, world, draft["id"], "pending_review", "approved", "active")
    assert (await client.get(url, headers=world.mb.headers)).status_code == 200
    r = await move(client, world.mb, draft["id"], "paused")
    assert r.status_code == 403
    assert (await client.get(f"{url}/history", headers=world.mb.headers)).status_code == 403
    current = (await client.get(url, headers=world.ma.headers)).json()
    assert current["status"] == "active"
    assert current["name"] == draft["name"]
    # The owner pauses its own campaign.
    assert (await move(client, world.ma, draft["id"], "paused")).status_code == 200


async def test_customer_sees_only_active_campaigns(client: httpx.AsyncClient, world: World) -> None:
    draft = await create(client, world.ma, name="draft one")
    pending = await create(client, world.ma, name="pending one")
    active = await create(client, world.ma, name="active one")
    paused = await create(client, world.mb, name="paused one")
    await walk(client, world, pending["id"], "pending_review")
    await walk(client, world, active["id"], "pending_review", "approved", "active")
    await walk(
        client,
        world,
        paused["id"],
        "pending_review",
        "approved",
        "active",
        "paused",
        owner=world.mb,
    )

    r = await client.get("/api/v1/campaigns", headers=world.cust.headers)
    assert r.status_code == 200
    assert [c["id"] for c in r.json()["items"]] == [active["id"]]
    r = await client.get("/api/v1/campaigns?status=draft", headers=world.cust.headers)
    assert r.json()["items"] == []
    for c in (draft, pending, paused):
        r = await client.get(f"/api/v1/campaigns/{c['id']}", headers=world.cust.headers)
        assert r.status_code == 404
    r = await client.get(f"/api/v1/campaigns/{active['id']}", headers=world.cust.headers)
    assert r.status_code == 200
    assert (await move(client, world.cust, active["id"], "paused")).status_code == 403
    r = await client.get(f"/api/v1/campaigns/{active['id']}/history", headers=world.cust.headers)
    assert r.status_code == 403
    assert (await client.get("/api/v1/campaigns")).status_code == 401


async def test_listing_filters_and_pages(client: httpx.AsyncClient, world: World) -> None:
    ids = []
    for kind in ("rebate", "coupon", "rebate", "referral", "rebate"):
        ids.append((await create(client, world.ma, kind=kind))["id"])
    b = await create(client, world.mb, kind="rebate")

    r = await client.get("/api/v1/campaigns?kind=rebate", headers=world.op.headers)
    assert {c["id"] for c in r.json()["items"]} == {ids[0], ids[2], ids[4], b["id"]}
    r = await client.get(f"/api/v1/campaigns?merchant={world.merchant_b}", headers=world.op.headers)
    assert [c["id"] for c in r.json()["items"]] == [b["id"]]
    # merchant staff see their own drafts, not another merchant's
    r = await client.get("/api/v1/campaigns", headers=world.ma.headers)
    assert {c["id"] for c in r.json()["items"]} == set(ids)

    seen: list[str] = []
    cursor = None
    while True:
        q = "/api/v1/campaigns?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(q, headers=world.op.headers)).json()
        assert len(page["items"]) <= 2
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([*ids, b["id"]])
    assert len(seen) == len(set(seen))
    created = [
        c["created_at"]
        for c in (await client.get("/api/v1/campaigns", headers=world.op.headers)).json()["items"]
    ]
    assert created == sorted(created, reverse=True)

    r = await client.get("/api/v1/campaigns?cursor=bm9wZQ", headers=world.op.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "cursor"
    r = await client.get("/api/v1/campaigns?status=bogus", headers=world.op.headers)
    assert r.status_code == 422
