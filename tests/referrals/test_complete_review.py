"""Outside review of referral completion: cases the first tests did not cover (a merchant's
campaign and business at another merchant, ...). Checked from the ledger and the tables."""

from __future__ import annotations

from typing import Any

import httpx

from incentive.db import Database
from incentive.referrals.models import Referral, ReferralReward
from tests.activities.conftest import Sender, budget_left, funding_account, payment
from tests.campaigns.conftest import RULES, World, create, walk
from tests.referrals.conftest import H, count, referee_of
from tests.referrals.test_complete import BUSINESS, outcome_of, partner, points, send

__all__ = ["partner"]  # the fixture


async def merchant_campaign(
    client: httpx.AsyncClient, db: Database, world: World, *, budget: int, **rules: Any
) -> dict[str, Any]:
    """An active referral campaign of merchant A, funded with ``budget`` points."""
    campaign = await create(client, world.ma, kind="referral", rules={**RULES["referral"], **rules})
    await walk(client, world, campaign["id"], "pending_review", "approved", "active")
    r = await client.post(
        f"{H}/campaigns/{campaign['id']}/budget",
        json={"amount": budget, "from_account_id": await funding_account(db, "POINTS")},
        headers={**world.op.headers, "Idempotency-Key": f"fund-{campaign['id']}"},
    )
    assert r.status_code == 201, r.text
    return campaign


async def test_a_merchants_campaign_is_completed_by_business_at_that_merchant_only(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await merchant_campaign(client, db, world, budget=1_000, **BUSINESS)
    referee = await referee_of(client, db, app, world.cust, campaign["id"])

    elsewhere = payment("pay-b", referee.user.id, world.merchant_b, 5_000)
    refused = outcome_of(await send(client, partner, elsewhere), campaign)
    assert (refused["status"], refused["reason"]) == ("refused", "other-merchant")
    # Merchant A's budget paid nobody for a sale at merchant B; the referral is still open.
    assert await budget_left(db, campaign) == 1_000
    assert await count(db, ReferralReward) == 0
    assert await count(db, Referral, state="accepted") == 1

    here = payment("pay-a", referee.user.id, world.merchant_a, 5_000)
    done = outcome_of(await send(client, partner, here), campaign)
    assert (done["status"], done["detail"]["state"]) == ("rewarded", "rewarded")
    assert (await points(db, world.cust), await points(db, referee)) == (100, 20)
    assert await budget_left(db, campaign) == 1_000 - 120
