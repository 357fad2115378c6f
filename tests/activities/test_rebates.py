"""Payments rebate the customer, the merchant and the staff member at once; refunds reverse
them in proportion; every refusal has its reason and moves nothing. Balances are read from the
ledger, not from the answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.activities.models import Activity, ActivityOutcome
from incentive.db import Database
from incentive.ledger.models import Transfer
from tests.activities.conftest import (
    Sender,
    balance,
    budget_left,
    cny_total,
    payment,
    rebate_campaign,
    refund,
)
from tests.campaigns.conftest import World


async def send(
    client: httpx.AsyncClient, sender: Sender, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/api/v1/activities", json=body, headers={**sender.headers, **headers})


def outcome_of(answer: dict[str, Any], campaign: dict[str, Any]) -> dict[str, Any]:
    found = [o for o in answer["outcomes"] if o["campaign_id"] == campaign["id"]]
    assert len(found) == 1, answer
    return found[0]


async def rows(db: Database, model: Any) -> int:
    async with db.unit_of_work() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_payment_rebates_customer_merchant_and_staff_from_the_budget_at_once(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=100_000)
    body = payment("p-1", world.cust.user.id, world.merchant_a, 20_000, staff=world.ma.user.id)
    r = await send(client, sender, body)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["id"] == "p-1"
    assert answer["state"] == "evaluated"
    outcome = outcome_of(answer, campaign)
    assert outcome["status"] == "rewarded"
    assert outcome["detail"]["user_fen"] == 400
    assert outcome["detail"]["merchant_fen"] == 200
    assert outcome["detail"]["staff_fen"] == 100
    assert await balance(db, "user", world.cust.user.id) == 400
    assert await balance(db, "merchant", world.merchant_a) == 200
    assert await balance(db, "user", world.ma.user.id) == 100
    assert await budget_left(db, campaign) == 100_000 - 700
    assert await cny_total(db) == 0
    # The customer's transfer names the campaign and the payment.
    async with db.unit_of_work() as s:
        metas = list(await s.scalars(select(Transfer.meta).where(Transfer.kind == "rebate")))
    assert {m["payment_id"] for m in metas} == {"p-1"}
    assert {m["campaign_id"] for m in metas} == {campaign["id"]}
    # The customer sees the activity and its outcome.
    mine = await client.get("/api/v1/me/activities", headers=world.cust.headers)
    assert mine.status_code == 200
    assert [a["id"] for a in mine.json()["items"]] == ["p-1"]
    assert mine.json()["items"][0]["outcomes"][0]["status"] == "rewarded"


async def test_the_same_id_answers_the_first_outcome_and_another_body_is_a_409(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=100_000)
    body = payment("p-1", world.cust.user.id, world.merchant_a, 20_000)
    first = await send(client, sender, body)
    assert first.status_code == 201
    again = await send(client, sender, {**body, "attributes": {}})  # same body, spelled out
    assert again.status_code == 200
    assert again.json()["outcomes"] == first.json()["outcomes"]
    other = await send(client, sender, {**body, "amount_fen": 30_000})
    assert other.status_code == 409
    assert other.json()["type"].endswith("/activity-id-reused")
    assert await balance(db, "user", world.cust.user.id) == 400
    assert await budget_left(db, campaign) == 100_000 - 600
    assert await rows(db, Activity) == 1
    # Ids are the sender's own: another sender may use the same one.
    op = await client.post("/api/v1/activities", json=body, headers=world.op.headers)
    assert op.status_code == 201
    assert await balance(db, "user", world.cust.user.id) == 800


async def test_refusals_name_their_reason_and_move_nothing(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(
        client, db, world, budget=1_000, merchant_categories=["5812"], customer_daily_cap_fen=700
    )
    cust, a, b = world.cust.user.id, world.merchant_a, world.merchant_b
    food = {"attributes": {"merchant_category": "5812"}}
    early = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    cases = [
        (payment("small", cust, a, 999, **food), "below-minimum"),
        (payment("other-shop", cust, b, 10_000, **food), "not-joined"),
        (
            payment("wrong-category", cust, a, 10_000, attributes={"merchant_category": "7995"}),
            "category-not-eligible",
        ),
        (payment("no-category", cust, a, 10_000), "category-not-eligible"),
        ({**payment("before", cust, a, 10_000, **food), "occurred_at": early}, "outside-window"),
    ]
    for body, reason in cases:
        r = await send(client, sender, body)
        assert r.status_code == 201, r.text
        outcome = outcome_of(r.json(), campaign)
        assert (outcome["status"], outcome["reason"]) == ("refused", reason), body["id"]
    assert await budget_left(db, campaign) == 1_000
    # 30,000 fen: 600 to the customer, 300 to the merchant: fits the budget and the cap.
    ok = await send(client, sender, payment("ok", cust, a, 30_000, **food))
    assert outcome_of(ok.json(), campaign)["status"] == "rewarded"
    # The customer's daily cap leaves 100 of the next 600; the merchant's part is 300 but the
    # budget holds only 100 for 400: nothing is paid, not half.
    short = await send(client, sender, payment("short", cust, a, 30_000, **food))
    assert outcome_of(short.json(), campaign)["reason"] == "budget-exhausted"
    assert await balance(db, "user", cust) == 600
    assert await balance(db, "merchant", a) == 300
    assert await budget_left(db, campaign) == 100
    # The cap's count rolled back with the refusal: a payment that fits is still paid.
    fits = await send(client, sender, payment("fits", world.mb.user.id, a, 3_000, **food))
    assert outcome_of(fits.json(), campaign)["status"] == "rewarded"
    assert await budget_left(db, campaign) == 100 - 90
    assert await cny_total(db) == 0
    report = await client.get(
        f"/api/v1/campaigns/{campaign['id']}/rebates/report", headers=world.ma.headers
    )
    assert report.status_code == 200, report.text
    got = report.json()
    assert got["payments_rebated"] == 2
    assert got["refused"] == {
        "below-minimum": 1,
        "not-joined": 1,
        "category-not-eligible": 2,
        "outside-window": 1,
        "budget-exhausted": 1,
    }
    assert got["budget_spent_fen"] == 990
    assert got["budget_left_fen"] == 10


async def test_caps_cut_a_part_and_refuse_when_nothing_is_left(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(
        client, db, world, budget=100_000, customer_campaign_cap_fen=500, merchant_daily_cap_fen=250
    )
    cust, a = world.cust.user.id, world.merchant_a
    first = outcome_of((await send(client, sender, payment("1", cust, a, 20_000))).json(), campaign)
    assert (first["detail"]["user_fen"], first["detail"]["merchant_fen"]) == (400, 200)
    second = outcome_of(
        (await send(client, sender, payment("2", cust, a, 20_000))).json(), campaign
    )
    assert (second["detail"]["user_fen"], second["detail"]["merchant_fen"]) == (100, 50)
    assert second["detail"]["capped"] is True
    third = outcome_of((await send(client, sender, payment("3", cust, a, 20_000))).json(), campaign)
    assert (third["status"], third["reason"]) == ("refused", "cap-reached")
    assert await balance(db, "user", cust) == 500
    assert await balance(db, "merchant", a) == 250


async def test_refunds_reverse_in_proportion_and_record_what_was_spent_as_shortfall(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=100_000)
    cust, a = world.cust.user.id, world.merchant_a
    paid = payment("p", cust, a, 10_000)
    await send(client, sender, paid)  # 200 to the customer, 100 to the merchant
    half = await send(client, sender, refund("r1", paid, 5_000))
    assert half.status_code == 201, half.text
    outcome = outcome_of(half.json(), campaign)
    assert outcome["status"] == "reversed"
    assert outcome["detail"]["reversed_fen"] == {"user": 100, "merchant": 50}
    assert half.json()["refers_to"] == "p"
    assert await balance(db, "user", cust) == 100
    assert await balance(db, "merchant", a) == 50
    # The customer spends 80 of the 100 left; the rest of the refund can take back only 20.
    async with db.unit_of_work() as s:
        from incentive.ledger import service as ledger

        mine = await ledger.find_account(s, owner_type="user", owner_id=cust, asset="CNY")
        shop = await ledger.open_account(s, owner_type="merchant", owner_id="shop", asset="CNY")
        assert mine is not None
        await ledger.transfer(
            s,
            idempotency_key="spend",
            debit_account_id=mine.id,
            credit_account_id=shop.id,
            amount=80,
            kind="test",
        )
    rest = await send(client, sender, refund("r2", paid, 5_000))
    outcome = outcome_of(rest.json(), campaign)
    assert outcome["detail"]["reversed_fen"] == {"user": 20, "merchant": 50}
    assert outcome["detail"]["shortfall_fen"] == 80
    assert await balance(db, "user", cust) == 0
    assert await balance(db, "merchant", a) == 0
    assert await budget_left(db, campaign) == 100_000 - 300 + 220
    more = await send(client, sender, refund("r3", paid, 1))
    assert outcome_of(more.json(), campaign)["reason"] == "already-refunded"
    listed = await client.get(
        f"/api/v1/campaigns/{campaign['id']}/rebates", headers=world.cust.headers
    )
    [row] = listed.json()["items"]
    assert row["refunded_fen"] == 10_000
    assert row["shortfall_fen"] == 80
    assert row["reversed"] == {"user": 200, "merchant": 100, "staff": 0}
    assert await cny_total(db) == 0


async def test_a_refund_of_an_unknown_payment_is_a_422_and_stores_nothing(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    ghost = payment("ghost", world.cust.user.id, world.merchant_a, 100)
    r = await send(client, sender, refund("r", ghost, 100))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "refers_to"
    assert r.json()["errors"][0]["rule"] == "known-payment"
    assert await rows(db, Activity) == 0


async def test_a_batch_is_all_or_nothing_and_a_refund_may_follow_its_payment_in_it(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=100_000)
    cust, a = world.cust.user.id, world.merchant_a
    paid = payment("b1", cust, a, 10_000)
    bad = [paid, {**payment("b2", cust, a, 10_000), "amount_fen": -1}]
    r = await client.post(
        "/api/v1/activities/batch", json={"activities": bad}, headers=sender.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "activities.1.amount_fen"
    assert await rows(db, Activity) == 0
    good = [paid, payment("b2", cust, a, 20_000), refund("b3", paid, 10_000)]
    r = await client.post(
        "/api/v1/activities/batch", json={"activities": good}, headers=sender.headers
    )
    assert r.status_code == 201, r.text
    answers = r.json()["activities"]
    assert [x["id"] for x in answers] == ["b1", "b2", "b3"]
    assert outcome_of(answers[2], campaign)["status"] == "reversed"
    assert await balance(db, "user", cust) == 400
    assert await budget_left(db, campaign) == 100_000 - 600


async def test_queued_activities_are_evaluated_by_workers_with_the_same_outcome(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=100_000)
    r = await send(
        client,
        sender,
        payment("q", world.cust.user.id, world.merchant_a, 20_000),
        Prefer="respond-async",
    )
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "received"
    assert r.json()["outcomes"] == []
    for _ in range(200):
        got = (await client.get("/api/v1/activities/q", headers=sender.headers)).json()
        if got["state"] == "evaluated":
            break
        await asyncio.sleep(0.05)
    assert got["state"] == "evaluated"
    assert outcome_of(got, campaign)["detail"]["user_fen"] == 400
    assert await balance(db, "user", world.cust.user.id) == 400
    async with db.unit_of_work() as s:
        assert await s.scalar(select(func.count()).select_from(ActivityOutcome)) == 1


async def test_who_may_send_and_see_activities(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    body = payment("p", world.cust.user.id, world.merchant_a, 100)
    assert (await client.post("/api/v1/activities", json=body)).status_code == 401
    for actor in (world.cust, world.ma):
        r = await client.post("/api/v1/activities", json=body, headers=actor.headers)
        assert r.status_code == 403
    assert (await send(client, sender, body)).status_code == 201
    # Another sender does not see it; an operator does, naming the sender.
    theirs = await client.get("/api/v1/activities/p", headers=world.op.headers)
    assert theirs.status_code == 404
    named = await client.get(
        "/api/v1/activities/p",
        params={"sender": f"partner:{sender.partner_id}"},
        headers=world.op.headers,
    )
    assert named.status_code == 200
    assert (await client.get("/api/v1/me/activities", headers=world.ma.headers)).status_code == 403


async def test_a_batch_the_budget_cannot_cover_is_answered_as_one_by_one(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=1_000)
    cust, a, b = world.cust.user.id, world.merchant_a, world.merchant_b
    batch = [payment(f"p{i}", cust, a, 10_000) for i in range(5)]  # 300 fen each
    batch.insert(2, payment("elsewhere", cust, b, 10_000))
    r = await client.post(
        "/api/v1/activities/batch", json={"activities": batch}, headers=sender.headers
    )
    assert r.status_code == 201, r.text
    got = [
        (x["id"], outcome_of(x, campaign)["status"], outcome_of(x, campaign)["reason"])
        for x in r.json()["activities"]
    ]
    assert got == [
        ("p0", "rewarded", None),
        ("p1", "rewarded", None),
        ("elsewhere", "refused", "not-joined"),
        ("p2", "rewarded", None),
        ("p3", "refused", "budget-exhausted"),
        ("p4", "refused", "budget-exhausted"),
    ]
    assert await balance(db, "user", cust) == 600
    assert await balance(db, "merchant", a) == 300
    assert await budget_left(db, campaign) == 100
    assert await cny_total(db) == 0
    # A batch the budget covers is paid whole, in one ledger batch.
    covered = await rebate_campaign(client, db, world, budget=10_000)
    r = await client.post(
        "/api/v1/activities/batch",
        json={"activities": [payment(f"q{i}", cust, a, 10_000) for i in range(5)]},
        headers=sender.headers,
    )
    statuses = [outcome_of(x, covered)["status"] for x in r.json()["activities"]]
    assert statuses == ["rewarded"] * 5
    assert await budget_left(db, covered) == 10_000 - 5 * 300
