"""Each domain's data source, read from outside: real records made through the domain's own
API or service, then paged (one at a time, by campaign, since a time, after a cursor) and
read by key; every value has its declared module type, and nothing secret leaves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from incentive.db import Database
from incentive.errors import InvalidField
from incentive.events.models import OutboxEvent
from incentive.kit.sources import MAX_PAGE, DataSource, SourceRow, get_source, source_names
from incentive.settings import Settings
from tests.activities.conftest import Sender, payment, rebate_campaign, refund
from tests.campaigns.conftest import World, create, walk
from tests.coupons.conftest import claim, coupon_campaign
from tests.coupons.conftest import customers as coupon_customers
from tests.flash_sales.conftest import Sales
from tests.referrals.conftest import referee_of, referral_campaign
from tests.rewards.conftest import claim as claim_reward
from tests.rewards.conftest import option, reward_campaign

IS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "fen": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "datetime": lambda v: isinstance(v, datetime) and v.utcoffset() == timedelta(0),
    "boolean": lambda v: isinstance(v, bool),
    "json": lambda v: isinstance(v, dict | list),
}
NOT_KEYS = ["", "nope", "a:b:c", "x:1_0", "x:99999999999999999999", "\x00", "é" * 300]


def typed(source: DataSource, row: SourceRow) -> None:
    assert set(row.values) == set(source.fields), row.key
    for field, value in row.values.items():
        module_type = source.fields[field]
        assert value is None or IS[module_type](value), (row.key, field, module_type, value)
    assert IS["datetime"](row.changed_at)


async def pages(db: Database, source: DataSource, **where: Any) -> list[SourceRow]:
    rows: list[SourceRow] = []
    after = None
    async with db.unit_of_work() as s:
        while True:
            page = await source.page(s, after=after, limit=1, **where)
            assert len(page.rows) <= 1
            rows += page.rows
            if page.next_after is None:
                return rows
            after = page.next_after


async def read(db: Database, name: str, campaign_id: str | None, keys: set[str]) -> dict[str, Any]:
    """Page source ``name`` every way and read it by key; answers its records of
    ``campaign_id`` (of no campaign when None) by key."""
    source = get_source(name)
    every = await pages(db, source)
    async with db.unit_of_work() as s:
        whole = await source.page(s, limit=MAX_PAGE)
    assert [r.key for r in whole.rows] == [r.key for r in every]  # one order, any page size
    assert whole.next_after is None
    assert len({r.key for r in every}) == len(every)
    assert [r.changed_at for r in every] == sorted(r.changed_at for r in every)
    for row in every:
        typed(source, row)

    mine = [r for r in every if r.campaign_id == campaign_id]
    assert {r.key for r in mine} == keys
    if campaign_id is not None:
        assert [r.key for r in await pages(db, source, campaign_id=campaign_id)] == [
            r.key for r in mine
        ]
    assert await pages(db, source, campaign_id="no-such-campaign") == []

    since = max(r.changed_at for r in mine)
    later = await pages(db, source, since=since)
    assert [r.key for r in later] == [r.key for r in every if r.changed_at >= since]
    assert {r.key for r in mine if r.changed_at == since} <= {r.key for r in later}
    assert await pages(db, source, since=since + timedelta(microseconds=1)) == [
        r for r in every if r.changed_at > since
    ]

    async with db.unit_of_work() as s:
        found = await source.by_keys(s, [*sorted(keys), *sorted(keys), *NOT_KEYS])
    assert sorted(r.key for r in found) == sorted(keys)
    assert {r.key: r for r in found} == {r.key: r for r in mine}
    return {r.key: r.values for r in mine}


def test_every_domain_declaring_a_source_registers_it() -> None:
    assert source_names() == sorted(
        [
            "campaign",
            "coupon",
            "flash_sale_purchase",
            "points_record",
            "rebate_outcome",
            "referral",
            "reward_grant",
        ]
    )


async def test_a_cursor_not_of_ours_names_the_cursor(db: Database) -> None:
    async with db.unit_of_work() as s:
        with pytest.raises(InvalidField) as caught:
            await get_source("campaign").page(s, after="bm90LWEta2V5")
    assert caught.value.field == "cursor"


async def outbox_keys(db: Database, name: str) -> set[str]:
    source = get_source(name)
    async with db.unit_of_work() as s:
        events = (await s.execute(select(OutboxEvent.topic, OutboxEvent.payload))).all()
    return {k for topic, payload in events for k in source.keys_of(topic, payload)}


async def test_campaigns(client: httpx.AsyncClient, db: Database, world: World) -> None:
    rebate = await create(client, world.ma)
    await walk(client, world, rebate["id"], "pending_review", "approved", "active")
    reward = await create(client, world.op, kind="reward")
    got = await read(db, "campaign", rebate["id"], {rebate["id"]})
    values = got[rebate["id"]]
    assert (values["status"], values["kind"], values["owner_type"]) == (
        "active",
        "rebate",
        "merchant",
    )
    assert (values["merchant_id"], values["budget_asset"]) == (world.merchant_a, "CNY")
    assert values["rules"]["user_rebate_bp"] == 200
    assert values["budget_account_id"] == rebate["budget_account_id"]
    assert (await read(db, "campaign", reward["id"], {reward["id"]}))[reward["id"]][
        "budget_asset"
    ] == "POINTS"
    assert await outbox_keys(db, "campaign") == {rebate["id"]}  # only it changed status


async def test_rebate_outcomes(
    client: httpx.AsyncClient, db: Database, world: World, sender: Sender
) -> None:
    campaign = await rebate_campaign(client, db, world, budget=100_000)
    paid = payment("p-1", world.cust.user.id, world.merchant_a, 20_000, staff=world.ma.user.id)
    other = payment("p-2", world.cust.user.id, world.merchant_a, 10_000)
    for body in (paid, other, refund("r-1", paid, 10_000)):
        r = await client.post("/api/v1/activities", json=body, headers=sender.headers)
        assert r.status_code == 201, r.text
    async with db.unit_of_work() as s:
        page = await get_source("rebate_outcome").page(s, campaign_id=campaign["id"])
    keys = {r.key for r in page.rows}
    got = await read(db, "rebate_outcome", campaign["id"], keys)
    by_payment = {v["payment_id"]: v for v in got.values()}
    assert set(by_payment) == {"p-1", "p-2"}
    one, two = by_payment["p-1"], by_payment["p-2"]
    assert (one["user_fen"], one["merchant_fen"], one["staff_fen"]) == (400, 200, 100)
    assert (one["refunded_fen"], one["reversed_user_fen"], one["reversed"]) == (10_000, 200, True)
    assert (two["staff"], two["staff_fen"], two["reversed"]) == (None, 0, False)
    assert (one["customer"], one["merchant"]) == (world.cust.user.id, world.merchant_a)
    assert {f"{campaign['id']}:{v['activity_id']}" for v in got.values()} == keys
    assert await outbox_keys(db, "rebate_outcome") == set()


async def test_coupons(client: httpx.AsyncClient, db: Database, app: Any, world: World) -> None:
    campaign, batch = await coupon_campaign(client, world, min_spend_fen=1_000)
    first, second = await coupon_customers(db, app, 2)
    claimed = [(await claim(client, c, batch)).json() for c in (first, second)]
    r = await client.post(
        "/api/v1/till/redemptions",
        json={"code": claimed[0]["code"], "amount_fen": 3_000},
        headers={**world.ma.headers, "Idempotency-Key": "till-1"},
    )
    assert r.status_code in (200, 201), r.text
    got = await read(db, "coupon", campaign["id"], {c["id"] for c in claimed})
    redeemed, usable = got[claimed[0]["id"]], got[claimed[1]["id"]]
    assert (redeemed["state"], usable["state"]) == ("redeemed", "usable")
    assert (redeemed["customer_id"], redeemed["batch_id"]) == (first.user.id, batch)
    assert (redeemed["face_value_fen"], redeemed["min_spend_fen"]) == (500, 1_000)
    assert redeemed["redeemed_merchant_id"] == world.merchant_a
    assert (redeemed["redeemed_amount_fen"], redeemed["redeemed_discount_fen"]) == (3_000, 500)
    assert redeemed["redeemed_at"] is not None
    assert usable["redeemed_at"] is None
    for coupon in claimed:  # the code is the coupon: it never leaves
        assert coupon["code"] not in repr(got[coupon["id"]])
    assert "code" not in get_source("coupon").fields
    assert get_source("coupon").keys_of("coupon.failed", {"coupon_id": "c1"}) == ["c1"]


async def test_reward_grants(client: httpx.AsyncClient, db: Database, world: World) -> None:
    campaign = await reward_campaign(client, db, world, [option("pts", amount=25, stock=5)])
    r = await claim_reward(client, world.cust.headers, campaign["id"])
    assert r.status_code in (200, 201), r.text
    grant = r.json()
    values = (await read(db, "reward_grant", campaign["id"], {grant["id"]}))[grant["id"]]
    assert (values["customer_id"], values["reward_code"], values["amount"]) == (
        world.cust.user.id,
        "pts",
        25,
    )
    assert (values["state"], values["type"], values["delivery"]) == ("granted", "points", "ledger")
    assert values["chain"][0]["code"] == "pts"
    source = get_source("reward_grant")
    assert source.keys_of("rewards.message", {"grant_id": grant["id"]}) == [grant["id"]]
    assert source.keys_of("rewards.stock_low", {"campaign_id": campaign["id"]}) == []


async def test_referrals(client: httpx.AsyncClient, db: Database, app: Any, world: World) -> None:
    campaign = await referral_campaign(client, world)
    referee = await referee_of(client, db, app, world.cust, campaign["id"])
    async with db.unit_of_work() as s:
        (row,) = (await get_source("referral").page(s, campaign_id=campaign["id"])).rows
    values = (await read(db, "referral", campaign["id"], {row.key}))[row.key]
    assert (values["referrer_id"], values["referee_id"]) == (world.cust.user.id, referee.user.id)
    assert (values["state"], values["via"], values["reason"]) == ("accepted", "acceptance", None)
    assert (values["completed_at"], values["business_amount_fen"]) == (None, None)
    assert "address_hash" not in values
    assert await outbox_keys(db, "referral") == set()


async def test_flash_sale_purchases(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    from tests.factories import make_user

    sales = Sales(client, await make_user(db, app, username="flash-op", role="operator"), db, app)
    sale = await sales.create(10, limit=3)
    bought = []
    for quantity in (1, 2):
        r = await sales.buy(world.cust, sale, quantity)
        assert r.status_code in (200, 201), r.text
        bought.append(r.json())
    keys = {b["id"] for b in bought}
    got = await read(db, "flash_sale_purchase", sale, keys)
    assert sorted(v["quantity"] for v in got.values()) == [1, 2]
    assert {v["user_id"] for v in got.values()} == {world.cust.user.id}
    assert {v["campaign_id"] for v in got.values()} == {sale}
    assert await outbox_keys(db, "flash_sale_purchase") == set()


async def test_points_records(
    db: Database, quiet_settings: Settings, crypto: Any, pgp: Any, tmp_path: Path
) -> None:
    """Through the real pipeline (real gpg): a credited record, a failed one, and one whose
    points do not fit in 64 bits (its digits whole in ``points_text``)."""
    from incentive.points_files import intake, storage
    from tests.points_files.kit import (
        encrypt,
        make_members,
        make_partner,
        plain_file,
        rec,
        run_pipeline,
    )

    partner_id, _ = await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    records = [rec("ok", "alice", 7), rec("ghost", "nobody", 5), rec("huge", "alice", 2**64 + 1)]
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records))
    async with db.unit_of_work() as s:
        who = await intake.sender(s, "ACME")
    name = "POINTS_ACME_20250109_1.txt.pgp"
    chunks = storage.file_chunks(enc)
    row = await intake.receive(db, quiet_settings, who, name, chunks, source="http")
    await run_pipeline(db, quiet_settings)

    keys = {f"{row.id}:{line}" for line in (2, 3, 4)}  # line 1 is the header
    got = await read(db, "points_record", None, keys)
    by_id = {v["record_id"]: v for v in got.values()}
    ok, ghost, huge = by_id["ok"], by_id["ghost"], by_id["huge"]
    assert (ok["status"], ok["points"], ok["points_text"], ok["member_id"]) == (
        "credited",
        7,
        "7",
        "alice",
    )
    assert (ok["partner_id"], ok["file_id"], ok["file_name"]) == (partner_id, row.id, name)
    assert (ghost["status"], ghost["reason"], ghost["user_id"]) == (
        "failed",
        "UNKNOWN_MEMBER",
        None,
    )
    assert (huge["status"], huge["points"], huge["points_text"]) == (
        "failed",
        None,
        str(2**64 + 1),
    )
    assert await outbox_keys(db, "points_record") == set()
