"""Found by an outside review (issue 15): a share of a merchant's campaign converts only
activities at that merchant."""

from __future__ import annotations

from typing import Any

import httpx

from incentive.db import Database
from incentive.sharing.models import ShareConversion
from tests.activities.conftest import Sender
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.sharing.conftest import pay, rows, shared, shared_campaign, visit


async def test_a_payment_at_another_merchant_is_no_conversion_of_a_merchants_campaign(
    client: httpx.AsyncClient, db: Database, world: World, app: Any, sender: Sender
) -> None:
    campaign, _ = await shared_campaign(client, world, coupons=False)  # merchant A's
    (sharer,) = await customers(db, app, 1, prefix="outsider")
    made = await shared(client, sharer, campaign["id"])
    buyer = world.cust
    assert (await visit(client, made["token"], buyer)).status_code == 302
    # At merchant B: neither the visit nor the token in attributes.share attributes it.
    await pay(client, sender, buyer, world.merchant_b)
    await pay(client, sender, buyer, world.merchant_b, share=made["token"])
    assert await rows(db, ShareConversion) == []
    # At merchant A: it converts.
    await pay(client, sender, buyer, world.merchant_a)
    found = await rows(db, ShareConversion)
    assert [(c.share_id, c.customer_id, c.via) for c in found] == [
        (made["id"], buyer.user.id, "visit")
    ]
    r = await client.get(
        f"/api/v1/campaigns/{campaign['id']}/shares/stats", headers=world.ma.headers
    )
    assert r.json()["conversions"] == 1


async def test_a_link_too_long_for_a_qr_code_is_a_4xx_not_a_500(
    client: httpx.AsyncClient, world: World
) -> None:
    """Without INCENTIVE_PUBLIC_BASE_URL the link is built from the Host header, which the
    caller chooses: a long one overflowed the QR code (an unhandled segno error, 500)."""
    campaign, _ = await shared_campaign(client, world, coupons=False)
    made = await shared(client, world.ma, campaign["id"])
    url = f"/api/v1/shares/{made['token']}/qr"
    for ecc in ("l", "h"):
        r = await client.get(
            url, params={"ecc": ecc}, headers={**world.ma.headers, "Host": "a" * 3000 + ".test"}
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "Host"
    r = await client.get(url, params={"format": "svg"}, headers=world.ma.headers)
    assert (r.status_code, r.headers["content-type"]) == (200, "image/svg+xml")
