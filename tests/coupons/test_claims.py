"""Claiming our own coupons: the wallet, the limits, the stock, and the QR code."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from incentive.db import Database
from tests.campaigns.conftest import World
from tests.coupons.conftest import (
    batch_row,
    claim,
    coupon_campaign,
    coupons_of,
    customers,
    history,
    states,
)


async def test_a_claimed_coupon_is_usable_in_the_wallet_with_its_code(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, batch = await coupon_campaign(client, world, min_spend_fen=2000)
    r = await claim(client, world.cust, batch)
    assert r.status_code == 201, r.text
    coupon = r.json()
    assert coupon["state"] == "usable"
    assert coupon["face_value_fen"] == 500
    assert coupon["min_spend_fen"] == 2000
    assert len(coupon["code"]) == 10
    assert not set(coupon["code"]) & set("0O1IL")
    wallet = await client.get("/api/v1/me/coupons", headers=world.cust.headers)
    assert [c["id"] for c in wallet.json()["items"]] == [coupon["id"]]
    assert (await history(db, coupon["id"])) == [(None, "usable")]
    assert (await batch_row(db, batch)).stock == 99


async def test_the_same_key_answers_the_first_claim_and_the_limit_holds(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    _, batch = await coupon_campaign(client, world, per_user_limit=2, quantity=10)
    first = await claim(client, world.cust, batch, key="k1")
    again = await claim(client, world.cust, batch, key="k1")
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await claim(client, world.cust, batch)).status_code == 201
    third = await claim(client, world.cust, batch)
    assert third.status_code == 409
    assert third.json()["type"].endswith("claim-limit-reached")
    assert len(await coupons_of(db, batch)) == 2
    assert (await batch_row(db, batch)).stock == 8


async def test_an_exhausted_batch_refuses_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    _, batch = await coupon_campaign(client, world, quantity=2)
    people = await customers(db, app, 3)
    answers = [(await claim(client, p, batch)).status_code for p in people]
    assert answers == [201, 201, 409]
    assert len(await coupons_of(db, batch)) == 2


async def test_a_paused_campaign_takes_no_claims(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign, batch = await coupon_campaign(client, world)
    r = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/transitions",
        json={"to": "paused", "reason": "stop"},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    refused = await claim(client, world.cust, batch)
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("coupon-batch-closed")
    assert await coupons_of(db, batch) == []


async def test_a_thousand_concurrent_claims_on_a_batch_of_a_hundred_give_exactly_a_hundred(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    _, batch = await coupon_campaign(client, world, quantity=100, per_user_limit=3)
    people = await customers(db, app, 250)

    async def go(i: int) -> int:
        return (await claim(client, people[i % 250], batch)).status_code

    codes = await asyncio.gather(*(go(i) for i in range(1000)))
    assert codes.count(201) == 100
    assert set(codes) == {201, 409}
    coupons = await coupons_of(db, batch)
    assert len(coupons) == 100
    assert len({c.code for c in coupons}) == 100
    per_customer: dict[str, int] = {}
    for c in coupons:
        per_customer[c.customer_id] = per_customer.get(c.customer_id, 0) + 1
    assert max(per_customer.values()) <= 3
    row = await batch_row(db, batch)
    assert (row.stock, row.claimed) == (0, 100)
    assert await states(db, batch) == {"usable": 100}


async def test_concurrent_claims_of_few_customers_stop_at_each_ones_limit(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    _, batch = await coupon_campaign(client, world, quantity=100, per_user_limit=3)
    people = await customers(db, app, 10, prefix="few")
    codes = await asyncio.gather(*(claim(client, people[i % 10], batch) for i in range(200)))
    assert sorted(r.status_code for r in codes) == [201] * 30 + [409] * 170
    per_customer: dict[str, int] = {}
    for c in await coupons_of(db, batch):
        per_customer[c.customer_id] = per_customer.get(c.customer_id, 0) + 1
    assert sorted(per_customer.values()) == [3] * 10
    row = await batch_row(db, batch)
    assert (row.stock, row.claimed) == (70, 30)


async def test_the_qr_code_reads_back_as_the_coupon_code(
    client: httpx.AsyncClient, world: World, tmp_path: Any
) -> None:
    _, batch = await coupon_campaign(client, world)
    coupon = (await claim(client, world.cust, batch)).json()
    png = await client.get(coupon["qr"], headers=world.cust.headers)
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    svg = await client.get(coupon["qr"], params={"format": "svg"}, headers=world.cust.headers)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    path = tmp_path / "qr.png"
    path.write_bytes(png.content)
    try:
        zbar = await asyncio.create_subprocess_exec(
            "zbarimg", "--raw", "-q", str(path), stdout=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        pytest.fail("zbarimg (zbar-tools) is needed to read the QR code back")
    out, _ = await zbar.communicate()
    assert zbar.returncode == 0
    assert out.decode().strip() == coupon["code"]
    other = await client.get(coupon["qr"], headers=world.ma.headers)
    assert other.status_code == 403


async def test_rules_are_checked_at_the_field(client: httpx.AsyncClient, world: World) -> None:
    from tests.campaigns.conftest import campaign_body

    for rules, field in [
        ({"face_value_fen": 500, "rate_bp": 100, "quantity": 5}, "rules"),
        ({"rate_bp": 1000, "quantity": 5}, "rules"),
        ({"face_value_fen": 500}, "rules"),
        ({"provider": "nobody", "provider_batch": "b1"}, "rules.provider"),
        ({"face_value_fen": 5, "quantity": 5, "task": {"activity": "task_completed"}}, "rules"),
    ]:
        r = await client.post(
            "/api/v1/campaigns",
            json=campaign_body("coupon", rules=rules),
            headers=world.ma.headers,
        )
        assert r.status_code == 422, (rules, r.text)
        problem = r.json()
        assert problem["errors"][0]["field"].startswith(field), problem


async def test_a_coupon_and_a_closed_batch_are_seen_only_by_who_may(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    campaign, batch = await coupon_campaign(client, world)
    coupon = (await claim(client, world.cust, batch)).json()
    (other,) = await customers(db, app, 1, prefix="other")
    for path in (
        "/api/v1/me/coupons/{}",
        "/api/v1/me/coupons/{}/qr",
        "/api/v1/coupons/{}/transitions",
    ):
        r = await client.get(path.format(coupon["id"]), headers=other.headers)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["type"].endswith("coupon-not-found")
    r = await client.get(f"/api/v1/coupons/{coupon['id']}/transitions", headers=world.op.headers)
    assert r.status_code == 200
    await client.post(
        f"/api/v1/campaigns/{campaign['id']}/transitions",
        json={"to": "paused", "reason": "x"},
        headers=world.ma.headers,
    )
    url = f"/api/v1/coupon-batches/{batch}"
    assert (await client.get(url, headers=world.mb.headers)).status_code == 404
    assert (await client.get(url, headers=other.headers)).status_code == 404
    mine = await client.get(url, headers=world.ma.headers)
    assert mine.status_code == 200
    assert mine.json()["counts"] == {"usable": 1}
    refused = await claim(client, other, batch)
    assert refused.status_code == 409


async def test_a_client_gone_before_its_claim_arrived_is_a_quiet_answer(
    app: Any, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """An idempotent route without a body reads the (empty) body after the caller is known:
    a client hanging up meanwhile is no server error (it was logged as one, a 500)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/api/v1/coupon-batches/{'0' * 32}/claims",
        "raw_path": f"/api/v1/coupon-batches/{'0' * 32}/claims".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", world.cust.headers["Authorization"].encode()),
            (b"idempotency-key", b"gone-1"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_validity_runs_n_days_from_the_claim_or_to_the_batchs_fixed_end(
    client: httpx.AsyncClient, world: World
) -> None:
    _, by_days = await coupon_campaign(client, world, valid_days=3)
    coupon = (await claim(client, world.cust, by_days)).json()
    claimed = datetime.fromisoformat(coupon["claimed_at"])
    until = datetime.fromisoformat(coupon["valid_until"])
    assert until - claimed == timedelta(days=3)
    end = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0)
    _, fixed = await coupon_campaign(client, world, valid_until=end.isoformat())
    coupon = (await claim(client, world.cust, fixed)).json()
    assert datetime.fromisoformat(coupon["valid_until"]) == end
    _, default = await coupon_campaign(client, world)
    coupon = (await claim(client, world.cust, default)).json()
    claimed = datetime.fromisoformat(coupon["claimed_at"])
    assert datetime.fromisoformat(coupon["valid_until"]) - claimed == timedelta(days=30)


async def test_imported_codes_are_given_by_claims_and_a_batch_without_codes_left_refuses(
    client: httpx.AsyncClient, db: Database, world: World, app: Any
) -> None:
    _, batch = await coupon_campaign(client, world, quantity=5, codes="imported")
    assert (await claim(client, world.cust, batch)).status_code == 409  # nothing imported yet
    r = await client.post(
        f"/api/v1/coupon-batches/{batch}/codes",
        json={"codes": ["shop-0001", "SHOP 0002"]},
        headers=world.op.headers,
    )
    assert r.status_code == 200, r.text
    people = await customers(db, app, 3, prefix="imp")
    answers = [await claim(client, p, batch) for p in people]
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert sorted(a.json()["code"] for a in answers[:2]) == ["SHOP0001", "SHOP0002"]
    assert sorted(c.code for c in await coupons_of(db, batch)) == ["SHOP0001", "SHOP0002"]
