"""Regression tests from the outside review of the coupons domain: each one failed before
its fix."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from incentive.coupons import calls, reconcile, service
from incentive.coupons.models import (
    Coupon,
    CouponBatch,
    CouponProvider,
    CouponRedemption,
    CouponTransition,
    ImportedCode,
    ProviderCall,
)
from incentive.db import Database
from incentive.kit.webhooks import sign
from tests.activities.conftest import Sender, payment
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import World
from tests.coupons.conftest import (
    batch_row,
    claim,
    coupon_campaign,
    coupons_of,
    customers,
    history,
)
from tests.coupons.fake_provider import FakeProvider
from tests.coupons.test_providers import (
    SECRET,
    configure,
    provider_campaign,
    register,
    settle,
    usable_provider_coupon,
)
from tests.coupons.test_providers import fake as fake  # noqa: F401  (fixture)
from tests.coupons.test_providers import served as served  # noqa: F401  (fixture)
from tests.coupons.test_providers import settings as settings  # noqa: F401  (fixture)


async def test_a_coupon_failed_callback_after_a_503_does_not_stop_the_retries(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    fake: FakeProvider,
    app: Any,
    sender: Sender,
) -> None:
    # The provider's doc: `coupon.failed` means "nothing issued under that request_no unless
    # you send it again" — a hint, not a final refusal while our retries are still due.
    await configure(db, app)
    fake.add_batch("B1", stock=100)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1", task={"activity": "payment"})
    people = await customers(db, app, 10)
    for p in people:
        assert (await claim(client, p, batch)).status_code == 201
    fake.failure_callbacks = True
    fake.set_faults(fail_ratio=0.5, seed=3)
    r = await client.post(
        "/api/v1/activities/batch",
        json={
            "activities": [
                payment(f"p{i}", p.user.id, world.merchant_a, 500) for i, p in enumerate(people)
            ]
        },
        headers=sender.headers,
    )
    assert r.status_code in (200, 201), r.text
    coupon_sender = calls.Sender(db)
    try:
        for _ in range(3):
            await settle(db, coupon_sender)
            await asyncio.sleep(0.5)  # the coupon.failed callbacks land
    finally:
        await coupon_sender.aclose()
    ours = await coupons_of(db, batch)
    assert {c.state for c in ours} == {"usable"}, [(c.state, c.reason) for c in ours]
    assert fake.issued == 10


async def _table_rows(db: Database) -> dict[str, int]:
    async with db.unit_of_work() as s:
        return {
            model.__tablename__: int(await s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (CouponProvider, CouponBatch, Coupon, CouponTransition, ProviderCall)
        }


def _refusal(r: httpx.Response, field: str, rule: str | None = None) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    error = r.json()["errors"][0]
    assert error["field"] == field, r.json()
    if rule is not None:
        assert error["rule"] == rule, r.json()


async def test_a_provider_whose_whsec_secret_is_not_base64_or_whose_url_is_too_long_is_422(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    # Such a secret was stored and then refused every webhook the provider signed (401); such
    # an address was a 500 on PostgreSQL (varchar(500)) and silently kept on SQLite.
    good = {"code": "acme", "name": "Acme", "base_url": "http://127.0.0.1:9", "credentials": "k"}
    before = await _table_rows(db)
    r = await client.post(
        "/api/v1/coupon-providers",
        json={**good, "webhook_secret": "whsec_!!!!!!!!!!!!!!!!"},
        headers=world.op.headers,
    )
    _refusal(r, "webhook_secret", "webhook_secret_base64")
    r = await client.post(
        "/api/v1/coupon-providers",
        json={**good, "base_url": "http://" + "a" * 600 + ".example"},
        headers=world.op.headers,
    )
    _refusal(r, "base_url", "url_too_long")
    assert await _table_rows(db) == before

    assert (
        await client.post("/api/v1/coupon-providers", json=good, headers=world.op.headers)
    ).status_code == 201
    r = await client.patch(
        "/api/v1/coupon-providers/acme",
        json={"webhook_secret": "whsec_!!!!!!!!!!!!!!!!"},
        headers=world.op.headers,
    )
    _refusal(r, "webhook_secret", "webhook_secret_base64")


async def _unreachable_provider(client: httpx.AsyncClient, world: World, code: str) -> None:
    """A provider registered with our test secret at an address nobody answers."""
    r = await client.post(
        "/api/v1/coupon-providers",
        json={
            "code": code,
            "name": code.title(),
            "base_url": "http://127.0.0.1:9",
            "credentials": "k",
            "webhook_secret": SECRET,
        },
        headers=world.op.headers,
    )
    assert r.status_code == 201, r.text


def _signed(body: bytes, age_seconds: int = 0) -> dict[str, str]:
    stamp = int(time.time()) - age_seconds
    return {
        "content-type": "application/json",
        "webhook-id": "m1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(SECRET, "m1", stamp, body),
    }


def _batch(**changes: Any) -> dict[str, Any]:
    return {
        "id": "B9",
        "name": "n",
        "state": "running",
        "stock": 1,
        "face_value_fen": 1,
        "min_spend_fen": 0,
        **changes,
    }


@pytest.mark.parametrize(
    "event",
    [
        {"type": "batch.updated", "data": _batch(id="B\u00009")},
        {"type": "batch.updated", "data": _batch(id="B" * 65)},
        {"type": "batch.updated", "data": _batch(name="n\u0000")},
        {"type": "batch.updated", "data": _batch(name="n\ud800")},
        {"type": "batch.updated", "data": _batch(valid_until="0001-01-01T00:00:00+14:00")},
        {"type": "batch.updated", "data": _batch(valid_until="9999-12-31T23:59:59-12:00")},
        {"type": "coupon.issued", "data": {"request_no": "I1", "code": "C" * 65,
                                            "batch_id": "B9", "state": "issued"}},
        {"type": "coupon.failed", "data": {"request_no": "I\u00001"}},
        {"type": "coupon.failed", "data": {"request_no": 5}},
        {"type": "coupon.failed", "data": {"request_no": "I1", "reason": ["x"]}},
        {"type": ["batch.updated"], "data": {}},
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=[
        "nul-id", "long-id", "nul-name", "surrogate-name", "before-year-1", "after-year-9999",
        "long-code", "nul-request-no", "int-request-no", "list-reason", "list-type", "deep",
    ],
)  # fmt: skip
async def test_a_signed_webhook_of_the_wrong_shape_is_422_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, world: World, event: Any
) -> None:
    # Each was a 500 on PostgreSQL (NUL, too long) or on both engines (a time out of range in
    # UTC, JSON nested deeper than the parser), or stored as given on SQLite.
    await _unreachable_provider(client, world, "acme")
    before = await _table_rows(db)
    body = (event if isinstance(event, str) else json.dumps(event)).encode()
    r = await client.post(
        "/api/v1/coupon-providers/acme/webhooks", content=body, headers=_signed(body)
    )
    _refusal(r, "data")
    assert await _table_rows(db) == before


async def test_a_provider_cannot_fail_another_providers_coupon(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    await configure(db, app)
    fake.add_batch("B1", stock=5)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    (customer,) = await customers(db, app, 1)
    assert (await claim(client, customer, batch)).status_code == 201
    (coupon,) = await coupons_of(db, batch)
    assert coupon.state == "activating"
    assert coupon.request_no is not None
    # Another registered provider, with its own secret, names acme's request number.
    await _unreachable_provider(client, world, "rogue")
    async with db.unit_of_work() as s:  # acme's call is no longer due: only a word decides
        await s.execute(update(ProviderCall).values(state="failed"))
    body = json.dumps(
        {"type": "coupon.failed", "data": {"request_no": coupon.request_no, "reason": "x"}}
    ).encode()
    r = await client.post(
        "/api/v1/coupon-providers/rogue/webhooks", content=body, headers=_signed(body)
    )
    assert r.status_code == 200, r.text
    (after,) = await coupons_of(db, batch)
    assert after.state == "activating"
    assert await history(db, after.id) == [(None, "activating")]


async def _imported_batch(client: httpx.AsyncClient, world: World, quantity: int) -> str:
    _, batch = await coupon_campaign(client, world, quantity=quantity, codes="imported")
    return batch


@pytest.mark.parametrize(
    ("code", "why"), [("- - -", "nothing left"), ("A" * 33, "longer than a coupon code")]
)
async def test_an_imported_code_the_till_could_never_take_is_422(
    client: httpx.AsyncClient, db: Database, world: World, code: str, why: str
) -> None:
    # Was stored (an empty code, or a 500 on PostgreSQL for a long one), claimed into a wallet,
    # and refused at every till.
    batch = await _imported_batch(client, world, 5)
    before = await _table_rows(db)
    r = await client.post(
        f"/api/v1/coupon-batches/{batch}/codes",
        json={"codes": ["GOOD1", code]},
        headers=world.op.headers,
    )
    _refusal(r, "codes.1", "code_length")
    assert await _table_rows(db) == before
    assert (await batch_row(db, batch)).stock == 0


async def test_imports_at_once_never_stock_more_than_the_approved_quantity(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    batch = await _imported_batch(client, world, 10)
    answers = await asyncio.gather(
        *(
            client.post(
                f"/api/v1/coupon-batches/{batch}/codes",
                json={"codes": [f"IMP{n}X{i}" for i in range(10)]},
                headers=world.op.headers,
            )
            for n in range(4)
        )
    )
    assert sorted(r.status_code for r in answers) == [200, 422, 422, 422], [r.text for r in answers]
    row = await batch_row(db, batch)
    assert row.stock == 10
    async with db.unit_of_work() as s:
        assert await s.scalar(select(func.count()).select_from(ImportedCode)) == 10


async def test_a_batch_update_arriving_mid_claim_keeps_that_claim_out_of_the_stock(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    # The sync counted our outstanding claims before waiting for the claim's row lock, then
    # wrote the provider's stock less a count that missed the claim: one coupon promised
    # twice (PostgreSQL; SQLite's single writer serialises the two).
    await configure(db, app)
    fake.add_batch("B1", stock=5)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1", task={"activity": "payment"})
    (customer,) = await customers(db, app, 1)
    body = json.dumps({"type": "batch.updated", "data": _batch(id="B1", stock=5)}).encode()
    async with db.unit_of_work() as s:
        await service.issue(s, batch, customer.user.id, service.SYSTEM)
        update_ = asyncio.create_task(
            client.post(
                "/api/v1/coupon-providers/acme/webhooks", content=body, headers=_signed(body)
            )
        )
        await asyncio.sleep(0.5)  # the webhook is waiting for the batch now
    r = await update_
    assert r.status_code == 200, r.text
    assert (await batch_row(db, batch)).stock == 4


async def test_an_undo_reaches_the_provider_only_after_the_redemption_it_undoes(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    # A redemption answered 503 waited for its retry while the undo's reversal went out
    # first (404 at the provider: nothing to reverse), then the retry redeemed: the provider
    # held the coupon used, ours was usable again.
    coupon_sender = calls.Sender(db)
    try:
        mine = await usable_provider_coupon(client, db, world, fake, app, coupon_sender)
        r = await client.post(
            "/api/v1/till/redemptions",
            json={"code": mine["code"], "amount_fen": 5_000},
            headers={**world.ma.headers, "Idempotency-Key": "sale"},
        )
        assert r.status_code == 201, r.text
        fake.set_faults(fail_ratio=1.0, endpoints={"redeem"})
        await coupon_sender.run_once()  # the redemption's first attempt: 503
        fake.set_faults(fail_ratio=0.0, endpoints=None)
        undo = await client.post(
            f"/api/v1/till/redemptions/{r.json()['id']}/undo", headers=world.ma.headers
        )
        assert undo.status_code == 200, undo.text
        await settle(db, coupon_sender)
    finally:
        await coupon_sender.aclose()
    (theirs,) = fake.coupons()
    assert (fake.redeemed, fake.reversed, theirs.state) == (1, 1, "issued")
    async with db.unit_of_work() as s:
        redemption = await s.get(CouponRedemption, r.json()["id"])
        assert redemption is not None
        assert redemption.provider_state == "reversed"


async def test_reconciliation_does_not_make_usable_a_coupon_the_provider_revoked(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    # We gave up on the issue (it failed) although the provider issued it, and the provider
    # then revoked it: the repair to `usable` handed the customer a coupon the provider
    # refuses at every till.
    await configure(db, app, **{"coupons.provider_call_attempts": 1})
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    await claim(client, world.cust, batch)
    fake.set_faults(timeout_ratio=1.0, hang_seconds=2.0)
    fake.webhook_url = None
    coupon_sender = calls.Sender(db)
    try:
        await settle(db, coupon_sender)
    finally:
        await coupon_sender.aclose()
    fake.set_faults(timeout_ratio=0.0)
    (failed,) = await coupons_of(db, batch)
    assert failed.state == "failed"
    (theirs,) = fake.coupons()
    async with httpx.AsyncClient() as raw:
        r = await raw.post(
            f"{fake.base_url}/v1/coupons/{theirs.code}/revocation",
            json={"request_no": "V-by-their-operator", "reason": "fraud"},
            headers={"Authorization": "Bearer acme-key"},
        )
        assert r.status_code in (200, 201), r.text
    report = await reconcile.reconcile(db, "acme", datetime.now(UTC).date())
    kinds = {d.request_no: (d.kind, d.repaired) for d in report.differences}
    assert kinds == {failed.request_no: ("issued-at-provider", False)}
    (after,) = await coupons_of(db, batch)
    assert after.state == "failed"


async def test_a_batch_past_its_validity_gives_no_coupon_and_keeps_its_stock(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    # The campaign runs on after `valid_until`: each claim spent stock (and the customer's
    # limit) on a coupon that was expired before it reached the wallet.
    until = datetime.now(UTC) + timedelta(seconds=1)
    _, batch = await coupon_campaign(client, world, quantity=5, valid_until=until.isoformat())
    await asyncio.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.1)
    (customer,) = await customers(db, app, 1)
    r = await claim(client, customer, batch)
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/coupon-batch-closed")
    row = await batch_row(db, batch)
    assert (row.stock, row.claimed) == (5, 0)
    assert await coupons_of(db, batch) == []


async def test_batch_updates_arriving_out_of_order_keep_the_newest(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    await configure(db, app)
    fake.add_batch("B9", stock=5)
    await register(client, world, fake)  # pulled now: running, 5

    async def send(age: int, **changes: Any) -> None:
        body = json.dumps({"type": "batch.updated", "data": _batch(**changes)}).encode()
        r = await client.post(
            "/api/v1/coupon-providers/acme/webhooks", content=body, headers=_signed(body, age)
        )
        assert r.status_code == 200, r.text

    # Sent 30 s ago: stopped (but older than the pull: ignored); then sent now: stopped; then
    # a word from 60 s ago saying running with 100 arrives last: ignored.
    await send(30, state="stopped", stock=0)
    async with db.unit_of_work() as s:
        row = await s.scalar(select(CouponBatch).where(CouponBatch.external_id == "B9"))
        assert row is not None
        assert (row.provider_state, row.stock) == ("running", 5)
    await send(0, state="stopped", stock=0)
    await send(60, state="running", stock=100)
    async with db.unit_of_work() as s:
        row = await s.scalar(select(CouponBatch).where(CouponBatch.external_id == "B9"))
        assert row is not None
        assert (row.provider_state, row.stock) == ("stopped", 0)


async def test_a_disabled_provider_is_not_called_nor_heard_and_its_batches_take_no_claims(
    client: httpx.AsyncClient, db: Database, world: World, fake: FakeProvider, app: Any
) -> None:
    await configure(db, app)
    fake.add_batch("B1", stock=10)
    await register(client, world, fake)
    batch = await provider_campaign(client, world, "B1")
    assert (await claim(client, world.cust, batch)).status_code == 201  # activating
    r = await client.patch(
        "/api/v1/coupon-providers/acme", json={"state": "disabled"}, headers=world.op.headers
    )
    assert r.status_code == 200, r.text
    sender_ = calls.Sender(db)
    try:
        await sender_.run_once()
        assert fake.calls("issue") == 0
        refused = await claim(client, world.ma, batch)
        assert refused.status_code == 403  # merchants do not claim; a customer:
        (late,) = await customers(db, app, 1, prefix="late")
        closed = await claim(client, late, batch)
        assert closed.status_code == 409
        assert closed.json()["type"].endswith("coupon-batch-closed")
        body = json.dumps({"type": "batch.updated", "data": _batch(id="B1")}).encode()
        heard = await client.post(
            "/api/v1/coupon-providers/acme/webhooks", content=body, headers=_signed(body)
        )
        assert heard.status_code == 409
        r = await client.patch(
            "/api/v1/coupon-providers/acme", json={"state": "active"}, headers=world.op.headers
        )
        assert r.status_code == 200
        await settle(db, sender_)
    finally:
        await sender_.aclose()
    assert fake.issued == 1
    assert {c.state for c in await coupons_of(db, batch)} == {"usable"}
    assert (await claim(client, late, batch)).status_code == 201


async def test_a_lapsed_hold_is_released_by_the_expiry_job(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, batch = await coupon_campaign(client, world)
    coupon = (await claim(client, world.cust, batch)).json()
    held = await client.post(
        "/api/v1/till/holds",
        json={"code": coupon["code"], "amount_fen": 5_000},
        headers=world.ma.headers,
    )
    assert held.json()["state"] == "held"
    from incentive.coupons.runtime import expire_due

    assert await expire_due(db) == 0
    assert (await coupons_of(db, batch))[0].state == "held"  # not lapsed yet
    async with db.unit_of_work() as s:
        await s.execute(
            update(Coupon)
            .where(Coupon.id == coupon["id"])
            .values(held_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    await expire_due(db)
    (row,) = await coupons_of(db, batch)
    assert (row.state, row.held_by) == ("usable", None)
    assert [to for _, to in await history(db, row.id)] == ["usable", "held", "usable"]
