"""Outside review of referral completion: cases the first tests did not cover (a merchant's
campaign and business at another merchant, a refund after the hold ended,
releases that keep failing,
the reason a completion gave nothing, batches in
other orders). Checked from
the ledger and the tables."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from incentive.db import Database
from incentive.ledger.models import Account
from incentive.referrals import complete, runtime
from incentive.referrals.models import Referral, ReferralReward
from incentive.referrals.payouts import ESCROW
from tests.activities.conftest import Sender, budget_left, funding_account, payment, refund
from tests.campaigns.conftest import RULES, World, create, walk
from tests.referrals.conftest import (
    H,
    count,
    customer,
    funded_campaign,
    referee_of,
    set_config,
)
from tests.referrals.test_complete import BUSINESS, outcome_of, paid_by, partner, points, send

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


async def test_a_refund_after_the_hold_ended_does_not_void_what_the_job_has_not_paid_yet(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=1_000, hold_days=3, **BUSINESS)
    referee = await referee_of(client, db, app, world.cust, campaign["id"])
    paid = paid_by(referee)
    held = outcome_of(await send(client, partner, paid), campaign)
    assert held["detail"]["state"] == "pending"
    # The hold ended a minute ago; the release job has not run yet (workers down, or late).
    async with db.unit_of_work() as s:
        await s.execute(
            update(Referral).values(release_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    late = outcome_of(await send(client, partner, refund("late", paid, 5_000)), campaign)
    assert (late["status"], late["reason"]) == ("refused", "hold-ended")
    assert await count(db, Referral, state="pending") == 1
    assert len(await runtime.release_due(db)) == 1
    assert (await points(db, world.cust), await points(db, referee)) == (100, 20)
    assert await budget_left(db, campaign) == 1_000 - 120


async def test_releases_that_keep_failing_neither_hang_the_job_nor_block_the_others(
    client: httpx.AsyncClient,
    world: World,
    db: Database,
    app: Any,
    partner: Sender,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(complete, "RELEASE_PAGE", 2)  # a page of 2 instead of 100
    broken = await funded_campaign(client, db, world, budget=1_000, hold_days=1, **BUSINESS)
    healthy = await funded_campaign(client, db, world, budget=1_000, hold_days=1, **BUSINESS)
    stuck = [await referee_of(client, db, app, world.cust, broken["id"]) for _ in range(3)]
    fine = await referee_of(client, db, app, world.cust, healthy["id"])
    for referee in (*stuck, fine):
        await send(client, partner, paid_by(referee))
    now = datetime.now(UTC)
    async with db.unit_of_work() as s:
        # The broken campaign's referrals are due first; its escrow lost what it held, so
        # every release of it fails (and rolls back) on every run.
        await s.execute(
            update(Referral)
            .where(Referral.campaign_id == broken["id"])
            .values(release_at=now - timedelta(minutes=2))
        )
        await s.execute(
            update(Referral)
            .where(Referral.campaign_id == healthy["id"])
            .values(release_at=now - timedelta(minutes=1))
        )
        await s.execute(
            update(Account)
            .where(Account.owner_id == broken["id"], Account.name == ESCROW)
            .values(balance=0)
        )
    released = await asyncio.wait_for(runtime.release_due(db), timeout=30)
    assert len(released) == 1
    assert await count(db, Referral, campaign_id=broken["id"], state="pending") == 3
    assert await count(db, Referral, campaign_id=healthy["id"], state="rewarded") == 1
    assert await points(db, fine) == 20


async def test_a_coupon_out_of_stock_is_the_stored_reason_not_the_budget(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    from tests.coupons.conftest import coupon_campaign

    _, batch = await coupon_campaign(client, world, quantity=1)  # merchant A's, one coupon
    campaign = await merchant_campaign(
        client,
        db,
        world,
        budget=1_000,
        **BUSINESS,
        referrer_reward_points=0,
        referee_reward_points=0,
        referrer_reward={"type": "coupon", "coupon_batch_id": batch},
    )
    first, second = [await customer(db, app) for _ in range(2)]
    got = await referee_of(client, db, app, first, campaign["id"])
    missed = await referee_of(client, db, app, second, campaign["id"])
    done = outcome_of(
        await send(client, partner, payment("p1", got.user.id, world.merchant_a, 5_000)),
        campaign,
    )
    assert (done["status"], done["detail"]["state"]) == ("rewarded", "rewarded")
    empty = outcome_of(
        await send(client, partner, payment("p2", missed.user.id, world.merchant_a, 5_000)),
        campaign,
    )
    # Nothing was given because the batch ran out; the budget was never asked.
    assert (empty["status"], empty["reason"]) == ("refused", "out-of-stock")
    async with db.unit_of_work() as s:
        row = await s.scalar(select(Referral).where(Referral.referee_id == missed.user.id))
        assert row is not None
        assert (row.state, row.reason) == ("completed", "out-of-stock")
    assert await budget_left(db, campaign) == 1_000


async def test_two_batches_completing_the_same_referrals_in_other_orders_both_answer(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    # Each completion locks its referral, then the budget: two batches taking the same
    # referrals in opposite orders deadlocked on PostgreSQL (one answered 500).
    await set_config(db, app, "referrals.max_referees_per_address_hour", 100)
    campaign = await funded_campaign(
        client, db, world, budget=100_000, max_referrals_per_user=100, **BUSINESS
    )
    for _ in range(3):
        referees = [await referee_of(client, db, app, world.cust, campaign["id"]) for _ in range(4)]
        forth = [paid_by(r) for r in referees]
        back = [paid_by(r) for r in reversed(referees)]
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{H}/activities/batch", json={"activities": b}, headers=partner.headers
                )
                for b in (forth, back)
            )
        )
        assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    assert await count(db, Referral, state="rewarded") == 12
    assert await budget_left(db, campaign) == 100_000 - 12 * 120
