"""A referral completed by the referee's business through the activity stream: rewards paid
once from the budget (20 concurrent completions → one set), never beyond the budget under
concurrency, held then released or voided by a refund, multi-level payouts when switched on,
and what referrers, payees and operators read. Checked from the ledger and the tables."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from incentive.auth import service as auth_service
from incentive.db import Database
from incentive.ledger.models import Transfer
from incentive.referrals import runtime
from incentive.referrals.models import Referral, ReferralReward
from tests.activities.conftest import Sender, balance, budget_left, payment, refund
from tests.campaigns.conftest import World
from tests.referrals.conftest import (
    H,
    count,
    customer,
    funded_campaign,
    invited,
    mine,
    referee_of,
)

_ids = itertools.count()


@pytest.fixture
async def partner(db: Database) -> Sender:
    async with db.unit_of_work() as s:
        made, key = await auth_service.create_partner(s, "PAYAPP", "Pay app")
    return Sender(made.id, key)


def paid_by(referee: Any, amount_fen: int = 5_000, **extra: Any) -> dict[str, Any]:
    return payment(f"pay-{next(_ids)}", referee.user.id, "M001", amount_fen, **extra)


async def send(client: httpx.AsyncClient, partner: Sender, activity: dict[str, Any]) -> Any:
    r = await client.post(f"{H}/activities", json=activity, headers=partner.headers)
    assert r.status_code == 201, r.text
    return r.json()


def outcome_of(answer: Any, campaign: dict[str, Any]) -> dict[str, Any]:
    found = [o for o in answer["outcomes"] if o["campaign_id"] == campaign["id"]]
    assert len(found) == 1, answer
    return found[0]


async def points(db: Database, actor: Any) -> int:
    return await balance(db, "user", actor.user.id, "POINTS")


async def referral_transfers(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int(
            await s.scalar(
                select(func.count()).select_from(Transfer).where(Transfer.kind == "referral")
            )
            or 0
        )


BUSINESS = {"business": {"activity_type": "payment", "min_amount_fen": 1_000, "within_days": 30}}


async def test_the_business_completes_the_referral_and_pays_both_once(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=1_000, **BUSINESS)
    referee = await referee_of(client, db, app, world.cust, campaign["id"])
    outsider = await customer(db, app)

    small = outcome_of(await send(client, partner, paid_by(referee, 999)), campaign)
    assert (small["status"], small["reason"]) == ("refused", "below-minimum")
    other = outcome_of(await send(client, partner, paid_by(outsider)), campaign)
    assert (other["status"], other["reason"]) == ("refused", "not-referred")

    done = outcome_of(await send(client, partner, paid_by(referee)), campaign)
    assert done["status"] == "rewarded", done
    assert done["detail"]["state"] == "rewarded"
    again = outcome_of(await send(client, partner, paid_by(referee)), campaign)
    assert (again["status"], again["reason"]) == ("refused", "already-completed")

    assert (await points(db, world.cust), await points(db, referee)) == (100, 20)
    assert await budget_left(db, campaign) == 1_000 - 120
    assert await referral_transfers(db) == 2
    [listed] = await mine(client, world.cust)
    assert listed["state"] == "rewarded"
    assert listed["completed_at"] is not None
    assert (listed["reward"]["amount"], listed["reward"]["state"]) == (100, "paid")
    r = await client.get(f"{H}/me/referral-rewards", headers=referee.headers)
    assert [(x["side"], x["level"], x["amount"], x["state"]) for x in r.json()["items"]] == [
        ("referee", 0, 20, "paid")
    ]


async def test_20_concurrent_completions_of_one_referral_give_one_reward(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=10_000, **BUSINESS)
    referee = await referee_of(client, db, app, world.cust, campaign["id"])
    answers = await asyncio.gather(
        *(
            client.post(f"{H}/activities", json=paid_by(referee), headers=partner.headers)
            for _ in range(20)
        )
    )
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    statuses = sorted(outcome_of(a.json(), campaign)["status"] for a in answers)
    assert statuses.count("rewarded") == 1, statuses
    # From outside: one payee row each, two transfers, the balances and the budget.
    assert await count(db, ReferralReward) == 2
    assert await referral_transfers(db) == 2
    assert (await points(db, world.cust), await points(db, referee)) == (100, 20)
    assert await budget_left(db, campaign) == 10_000 - 120


async def test_the_budget_holds_under_concurrent_completions(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    # Room for 3 referrals of 120 points (and 60 more: never a partial set).
    campaign = await funded_campaign(client, db, world, budget=420, **BUSINESS)
    referrers = [await customer(db, app) for _ in range(8)]
    referees = [await referee_of(client, db, app, r, campaign["id"]) for r in referrers]
    answers = await asyncio.gather(
        *(
            client.post(f"{H}/activities", json=paid_by(r), headers=partner.headers)
            for r in referees
        )
    )
    outcomes = [outcome_of(a.json(), campaign) for a in answers]
    assert sorted((o["status"], o["reason"]) for o in outcomes) == sorted(
        [("rewarded", None)] * 3 + [("refused", "budget-exhausted")] * 5
    )
    assert await budget_left(db, campaign) == 60
    paid = [await points(db, r) for r in referrers]
    got = [await points(db, r) for r in referees]
    assert sorted(paid) == [0] * 5 + [100] * 3
    assert sorted(got) == [0] * 5 + [20] * 3
    # The referrer paid is the one whose referee was paid; the others say why.
    assert all((p, g) in ((0, 0), (100, 20)) for p, g in zip(paid, got, strict=True))
    assert await count(db, Referral, state="completed") == 5
    assert await count(db, ReferralReward, state="unpaid") == 10


async def test_a_hold_then_a_refund_voids_and_the_budget_gets_it_back(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=1_000, hold_days=7, **BUSINESS)
    kept, refunded, partly = [
        await referee_of(client, db, app, world.cust, campaign["id"]) for _ in range(3)
    ]
    pays = {}
    for referee in (kept, refunded, partly):
        pays[referee.user.id] = paid_by(referee, 5_000)
        done = outcome_of(await send(client, partner, pays[referee.user.id]), campaign)
        assert (done["status"], done["detail"]["state"]) == ("rewarded", "pending")
    # Held: the budget paid into the escrow, nobody holds anything yet.
    assert await budget_left(db, campaign) == 1_000 - 360
    assert await points(db, world.cust) == 0
    assert await points(db, kept) == 0
    report = (
        await client.get(
            f"{H}/campaigns/{campaign['id']}/referrals/report", headers=world.op.headers
        )
    ).json()
    assert report["escrow_held"] == 360
    assert report["referrals"] == {"pending": 3}

    full = outcome_of(
        await send(client, partner, refund("r1", pays[refunded.user.id], 5_000)), campaign
    )
    assert (full["status"], full["detail"]["state"]) == ("reversed", "voided")
    some = outcome_of(
        await send(client, partner, refund("r2", pays[partly.user.id], 4_000)), campaign
    )
    assert (some["status"], some["reason"]) == ("refused", "still-qualifies")
    assert await budget_left(db, campaign) == 1_000 - 240

    # Not due yet: the job pays nothing. Then the hold ends.
    assert await runtime.release_due(db) == []
    async with db.unit_of_work() as s:
        await s.execute(
            update(Referral)
            .where(Referral.state == "pending")
            .values(release_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert len(await runtime.release_due(db)) == 2
    assert await runtime.release_due(db) == []
    assert await points(db, world.cust) == 200
    assert (await points(db, kept), await points(db, refunded), await points(db, partly)) == (
        20,
        0,
        20,
    )
    late = outcome_of(
        await send(client, partner, refund("r3", pays[kept.user.id], 5_000)), campaign
    )
    assert (late["status"], late["reason"]) == ("refused", "already-paid")
    report = (
        await client.get(
            f"{H}/campaigns/{campaign['id']}/referrals/report", headers=world.op.headers
        )
    ).json()
    assert report["escrow_held"] == 0
    assert report["budget_left"] == 760
    assert report["referrals"] == {"rewarded": 2, "voided": 1}
    states = {(x["side"], x["state"]): (x["count"], x["amount"]) for x in report["rewards"]}
    assert states == {
        ("referee", "paid"): (2, 40),
        ("referee", "voided"): (1, 20),
        ("referrer", "paid"): (2, 200),
        ("referrer", "voided"): (1, 100),
    }


async def test_a_release_and_a_refund_at_once_end_one_way(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=10_000, hold_days=1, **BUSINESS)
    referees = [await referee_of(client, db, app, world.cust, campaign["id"]) for _ in range(6)]
    pays = [paid_by(r) for r in referees]
    for p in pays:
        await send(client, partner, p)
    async with db.unit_of_work() as s:
        await s.execute(
            update(Referral).values(release_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    refunds = [
        client.post(f"{H}/activities", json=refund(f"rf{i}", p, 5_000), headers=partner.headers)
        for i, p in enumerate(pays)
    ]
    results = await asyncio.gather(runtime.release_due(db), *refunds)
    released = set(results[0])
    async with db.unit_of_work() as s:
        rows = {r.referee_id: r.state for r in await s.scalars(select(Referral))}
    voided = {r for r, state in rows.items() if state == "voided"}
    assert len(voided) + len(released) == 6
    assert all(state in ("voided", "rewarded") for state in rows.values())
    # Each referee holds their reward exactly when their referral was released.
    for referee in referees:
        assert await points(db, referee) == (0 if referee.user.id in voided else 20)
    assert await points(db, world.cust) == 100 * (6 - len(voided))
    assert await budget_left(db, campaign) == 10_000 - 120 * (6 - len(voided))
    report = (
        await client.get(
            f"{H}/campaigns/{campaign['id']}/referrals/report", headers=world.op.headers
        )
    ).json()
    assert report["escrow_held"] == 0


async def test_multi_level_is_off_by_default_and_pays_each_level_when_on(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    for multi, expected in (
        (None, (0, 100)),
        ({"enabled": True, "rates_bp": [10_000, 5_000, 2_000]}, (50, 100)),
    ):
        rules: dict[str, Any] = {**BUSINESS, "referee_reward_points": 0}
        if multi:
            rules["multi_level"] = multi
        campaign = await funded_campaign(client, db, world, budget=1_000, **rules)
        top = await customer(db, app)
        middle = await referee_of(client, db, app, top, campaign["id"])
        bottom = await referee_of(client, db, app, middle, campaign["id"])
        before = (await points(db, top), await points(db, middle))
        done = outcome_of(await send(client, partner, paid_by(bottom)), campaign)
        assert done["status"] == "rewarded"
        after = (await points(db, top), await points(db, middle))
        assert (after[0] - before[0], after[1] - before[1]) == expected
        # The top's own referrer is nobody: level 3 is not paid.
        assert await budget_left(db, campaign) == 1_000 - sum(expected)
        r = await client.get(f"{H}/me/referral-rewards", headers=top.headers)
        levels = [(x["level"], x["amount"]) for x in r.json()["items"]]
        assert levels == ([(2, 50)] if multi else [])


@pytest.mark.parametrize(
    ("multi_level", "rules", "field"),
    [
        ({"enabled": "yes", "rates_bp": [10_000]}, {}, "rules.multi_level.enabled"),
        (
            {"enabled": True, "rates_bp": [10_000]},
            {
                "referrer_reward_points": 0,
                "referrer_reward": {"type": "coupon", "coupon_batch_id": "a" * 32},
            },
            "rules",
        ),
    ],
)
async def test_multi_level_rules_are_checked(
    client: httpx.AsyncClient,
    world: World,
    multi_level: dict[str, Any],
    rules: dict[str, Any],
    field: str,
) -> None:
    from tests.campaigns.conftest import RULES, campaign_body

    body = campaign_body(
        "referral", rules={**RULES["referral"], **rules, "multi_level": multi_level}
    )
    r = await client.post(f"{H}/campaigns", json=body, headers=world.op.headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


async def test_the_business_window_and_the_expiry_label(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=1_000, **BUSINESS)
    late, slow = [await referee_of(client, db, app, world.cust, campaign["id"]) for _ in range(2)]
    now = datetime.now(UTC)
    async with db.unit_of_work() as s:
        await s.execute(
            update(Referral).values(
                created_at=now - timedelta(minutes=30), business_due_at=now - timedelta(minutes=5)
            )
        )
    after = outcome_of(await send(client, partner, paid_by(late)), campaign)
    assert (after["status"], after["reason"]) == ("refused", "business-window-passed")
    await runtime.release_due(db)
    assert await count(db, Referral, state="expired") == 2
    # A payment made inside the window that arrives late still completes it.
    in_time = (now - timedelta(minutes=10)).isoformat()
    done = outcome_of(await send(client, partner, paid_by(slow, occurred_at=in_time)), campaign)
    assert done["status"] == "rewarded", done
    listed = {r["state"]: r["reason"] for r in await mine(client, world.cust)}
    assert listed == {"expired": "business-window-passed", "rewarded": None}


async def test_referrals_and_report_are_for_those_who_manage_the_campaign(
    client: httpx.AsyncClient, world: World, db: Database, app: Any, partner: Sender
) -> None:
    campaign = await funded_campaign(client, db, world, budget=1_000, **BUSINESS)
    referee = await referee_of(client, db, app, world.cust, campaign["id"])
    await invited(client, world.cust, campaign["id"])
    await send(client, partner, paid_by(referee))
    url = f"{H}/campaigns/{campaign['id']}/referrals"
    r = await client.get(url, headers=world.op.headers)
    [row] = r.json()["items"]
    assert (row["referee_id"], row["state"], row["business_amount_fen"]) == (
        referee.user.id,
        "rewarded",
        5_000,
    )
    assert (await client.get(f"{url}?state=accepted", headers=world.op.headers)).json()[
        "items"
    ] == []
    report = (await client.get(f"{url}/report", headers=world.op.headers)).json()
    assert (report["invites"], report["referrals"], report["budget_left"]) == (
        2,
        {"rewarded": 1},
        880,
    )
    for actor in (world.cust, world.ma):
        assert (await client.get(url, headers=actor.headers)).status_code == 403
        assert (await client.get(f"{url}/report", headers=actor.headers)).status_code == 403
