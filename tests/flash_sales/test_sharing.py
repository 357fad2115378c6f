"""Issue 15: a flash-sale purchase by a customer who came through a share converts for it —
told by the group commit, a whole batch at once, in the purchases' own transaction."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from incentive.db import Database, utcnow
from incentive.sharing.models import ShareConversion
from tests.coupons.conftest import customers
from tests.flash_sales.conftest import Sales
from tests.sharing.conftest import rows, shared, visit


async def test_purchases_after_a_visit_convert_for_the_shared_sale(
    sales: Sales, db: Database, app: Any
) -> None:
    client, h = sales.client, sales.operator.headers
    now = utcnow()
    r = await client.post(
        "/api/v1/flash-sales",
        json={
            "name": "Shared flash",
            "sku": "SKU-S",
            "item_name": "Tea",
            "price_fen": 990,
            "total_stock": 50,
            "per_user_limit": 5,
            "buckets": 2,
            "starts_at": (now - timedelta(seconds=1)).isoformat(),
            "ends_at": (now + timedelta(hours=1)).isoformat(),
        },
        headers=h,
    )
    sale = r.json()["id"]
    r = await client.put(
        f"/api/v1/campaigns/{sale}/sharing",
        json={"enabled": True, "conversion_types": ["purchase"]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    for to in ("pending_review", "active"):  # the automated review approves it
        r = await client.post(f"/api/v1/campaigns/{sale}/transitions", json={"to": to}, headers=h)
        assert r.status_code == 200, r.text
    await sales.wait_split(sale)
    alice, bob, *buyers = await customers(db, app, 12, prefix="buyer")
    a = await shared(client, alice, sale)
    for buyer in buyers:
        assert (await visit(client, a["token"], buyer)).status_code == 302
    # ten who came through alice's share buy at once (group-committed together), bob who
    # did not and alice herself buy too
    answers = await asyncio.gather(*(sales.buy(p, sale) for p in [*buyers, bob, alice]))
    assert [x.status_code for x in answers] == [201] * 12
    found = await rows(db, ShareConversion)
    assert sorted((c.source, c.customer_id, c.share_id) for c in found) == sorted(
        ("purchase", p.user.id, a["id"]) for p in buyers
    )
    assert {c.ref for c in found} == {x.json()["id"] for x in answers[:10]}
    stats = await client.get(f"/api/v1/campaigns/{sale}/shares/stats", headers=h)
    assert stats.json()["conversions"] == 10
