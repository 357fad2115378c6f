"""Ledger HTTP API: owners read their own value only; operators move it, idempotently."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from incentive.db import Database
from incentive.kit.models import IdempotencyRecord
from incentive.ledger import service as ledger
from incentive.ledger.models import Transfer
from tests.factories import Actor, make_merchant, make_user
from tests.ledger.reconcile import reconciled_balances


async def _setup(db: Database, app: Any) -> dict[str, Any]:
    op = await make_user(db, app, username="op", role="operator")
    alice = await make_user(db, app, username="alice")
    bob = await make_user(db, app, username="bob")
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        a = await ledger.open_account(s, owner_type="user", owner_id=alice.user.id, asset="POINTS")
        b = await ledger.open_account(s, owner_type="user", owner_id=bob.user.id, asset="POINTS")
        for acc, n in ((a, 100), (b, 50)):
            await ledger.transfer(
                s,
                idempotency_key=f"seed-{acc.id}",
                debit_account_id=issuer.id,
                credit_account_id=acc.id,
                amount=n,
                kind="funding",
            )
    return {"op": op, "alice": alice, "bob": bob, "issuer": issuer.id, "a": a.id, "b": b.id}


async def _balance(db: Database, account_id: int) -> int:
    async with db.unit_of_work() as s:
        return (await ledger.get_account(s, account_id)).balance


async def _count(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int((await s.execute(select(func.count()).select_from(Transfer))).scalar_one())


async def _state(db: Database) -> tuple[Any, int]:
    """Every balance (reconciled with the transfers), the transfer count and the number of
    claimed idempotency keys: what a refused request must leave exactly as it was."""
    async with db.unit_of_work() as s:
        keys = (await s.execute(select(func.count()).select_from(IdempotencyRecord))).scalar_one()
    return await reconciled_balances(db), int(keys)


def _h(actor: Actor, key: str | None = None) -> dict[str, str]:
    headers = dict(actor.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def test_customer_sees_only_own_accounts_and_transfers(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    r = await client.get("/api/v1/me/accounts", headers=w["alice"].headers)
    assert r.status_code == 200
    assert [(x["id"], x["balance"]) for x in r.json()["items"]] == [(w["a"], 100)]
    r = await client.get("/api/v1/me/transfers", headers=w["alice"].headers)
    body = r.json()
    assert r.status_code == 200
    assert body["next_cursor"] is None
    assert [t["credit_account_id"] for t in body["items"]] == [w["a"]]
    assert body["items"][0]["amount"] == 100


async def test_customer_cannot_read_another_customers_account(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    own = await client.get(f"/api/v1/accounts/{w['a']}", headers=w["alice"].headers)
    assert own.status_code == 200
    assert own.json()["balance"] == 100
    for path in (f"/api/v1/accounts/{w['b']}", f"/api/v1/accounts/{w['b']}/transfers"):
        r = await client.get(path, headers=w["alice"].headers)
        assert r.status_code == 404, path  # as for an account that does not exist
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "balance" not in r.text
    r = await client.get(f"/api/v1/accounts/{w['a']}", headers={})
    assert r.status_code == 401
    r = await client.get("/api/v1/accounts/999999", headers=w["op"].headers)
    assert r.status_code == 404


async def test_customer_cannot_move_value(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    before = await _count(db)
    body = {"debit_account_id": w["b"], "credit_account_id": w["a"], "amount": 50, "kind": "x"}
    r = await client.post("/api/v1/transfers", json=body, headers=_h(w["alice"], "steal-1"))
    assert r.status_code == 403
    batch = {"items": [{**body, "idempotency_key": "steal-2"}]}
    r = await client.post("/api/v1/transfers/batch", json=batch, headers=_h(w["alice"], "s2"))
    assert r.status_code == 403
    r = await client.post("/api/v1/transfers", json=body, headers={"Idempotency-Key": "s3"})
    assert r.status_code == 401
    assert await _balance(db, w["b"]) == 50
    assert await _balance(db, w["a"]) == 100
    assert await _count(db) == before


async def test_merchant_staff_see_their_merchant_accounts(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    m = await make_merchant(db)
    staff = await make_user(db, app, username="staff", role="merchant", merchant_id=m.id)
    async with db.unit_of_work() as s:
        acc = await ledger.open_account(s, owner_type="merchant", owner_id=m.id, asset="CNY")
    r = await client.get("/api/v1/me/accounts", headers=staff.headers)
    assert [x["id"] for x in r.json()["items"]] == [acc.id]
    assert (
        await client.get(f"/api/v1/accounts/{acc.id}", headers=staff.headers)
    ).status_code == 200


async def test_operator_transfer_and_replay(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    body = {
        "debit_account_id": w["a"],
        "credit_account_id": w["b"],
        "amount": 30,
        "kind": "adjust",
        "reference": "ticket-1",
        "metadata": {"by": "op"},
    }
    first = await client.post("/api/v1/transfers", json=body, headers=_h(w["op"], "pay-1"))
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = await client.post("/api/v1/transfers", json=body, headers=_h(w["op"], "pay-1"))
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert first.json()["metadata"] == {"by": "op"}
    assert await _balance(db, w["a"]) == 70
    assert await _balance(db, w["b"]) == 80


async def test_key_reuse_with_other_body_is_409_and_writes_nothing(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    body = {"debit_account_id": w["a"], "credit_account_id": w["b"], "amount": 30, "kind": "x"}
    assert (
        await client.post("/api/v1/transfers", json=body, headers=_h(w["op"], "k"))
    ).status_code == 201
    before = await _count(db)
    r = await client.post(
        "/api/v1/transfers", json={**body, "amount": 31}, headers=_h(w["op"], "k")
    )
    assert r.status_code == 409
    assert r.json()["type"].endswith("/idempotency-key-reused")
    assert await _count(db) == before
    assert await _balance(db, w["a"]) == 70


async def test_idempotency_key_header_is_required_and_validated(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    before = await _state(db)
    body = {"debit_account_id": w["a"], "credit_account_id": w["b"], "amount": 1, "kind": "x"}
    for key in (None, "", "x" * 201, "tab\there", "é".encode()):
        headers: dict[str, str | bytes] = dict(w["op"].headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        r = await client.post("/api/v1/transfers", json=body, headers=headers)
        assert r.status_code == 422, key
        problem = r.json()
        assert problem["errors"][0]["field"] == "Idempotency-Key", problem
        assert problem["errors"][0]["in"] == "header"
        assert await _state(db) == before


async def test_bad_amounts_are_422_naming_the_field(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    before = await _state(db)
    base = {"debit_account_id": w["a"], "credit_account_id": w["b"], "kind": "x"}
    for n, amount in enumerate((0, -1, 1.5, "10", 10**16)):
        r = await client.post(
            "/api/v1/transfers", json={**base, "amount": amount}, headers=_h(w["op"], f"a{n}")
        )
        assert r.status_code == 422, amount
        assert r.json()["errors"][0]["field"] == "amount"
        assert await _state(db) == before
    r = await client.post(
        "/api/v1/transfers",
        json={**base, "credit_account_id": w["a"], "amount": 1},
        headers=_h(w["op"], "same"),
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "credit_account_id"
    assert await _state(db) == before
    # The refused keys stay free: the same key with a good body moves value once.
    r = await client.post(
        "/api/v1/transfers", json={**base, "amount": 1}, headers=_h(w["op"], "same")
    )
    assert r.status_code == 201, r.text
    assert "Idempotent-Replayed" not in r.headers
    assert await _balance(db, w["a"]) == 99


async def test_insufficient_funds_over_http_leaves_key_free(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    body = {"debit_account_id": w["b"], "credit_account_id": w["a"], "amount": 60, "kind": "x"}
    r = await client.post("/api/v1/transfers", json=body, headers=_h(w["op"], "later"))
    assert r.status_code == 409
    assert r.json()["type"].endswith("/insufficient-funds")
    assert await _balance(db, w["b"]) == 50
    top_up = {
        "debit_account_id": w["issuer"],
        "credit_account_id": w["b"],
        "amount": 10,
        "kind": "funding",
    }
    assert (
        await client.post("/api/v1/transfers", json=top_up, headers=_h(w["op"], "top"))
    ).status_code == 201
    r = await client.post("/api/v1/transfers", json=body, headers=_h(w["op"], "later"))
    assert r.status_code == 201
    assert "Idempotent-Replayed" not in r.headers
    assert await _balance(db, w["b"]) == 0
    assert await _balance(db, w["a"]) == 160


async def test_batch_endpoint_all_or_nothing_and_replay(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    ok = {
        "items": [
            {
                "idempotency_key": f"i{n}",
                "debit_account_id": w["a"],
                "credit_account_id": w["b"],
                "amount": 10,
                "kind": "move",
            }
            for n in range(5)
        ]
    }
    r = await client.post("/api/v1/transfers/batch", json=ok, headers=_h(w["op"], "batch-1"))
    assert r.status_code == 200, r.text
    assert r.json() == {"created": 5, "skipped": 0, "skipped_keys": []}
    r2 = await client.post("/api/v1/transfers/batch", json=ok, headers=_h(w["op"], "batch-1"))
    assert r2.json() == r.json()
    assert r2.headers["Idempotent-Replayed"] == "true"
    # Same items under a new request key: every item is skipped as already applied.
    r3 = await client.post("/api/v1/transfers/batch", json=ok, headers=_h(w["op"], "batch-2"))
    assert r3.json()["skipped"] == 5
    assert r3.json()["created"] == 0
    assert await _balance(db, w["a"]) == 50
    before = await _count(db)
    too_much = {
        "items": [
            {
                "idempotency_key": "j1",
                "debit_account_id": w["issuer"],
                "credit_account_id": w["b"],
                "amount": 5,
                "kind": "grant",
            },
            {
                "idempotency_key": "j2",
                "debit_account_id": w["a"],
                "credit_account_id": w["b"],
                "amount": 51,
                "kind": "move",
            },
        ]
    }
    r = await client.post("/api/v1/transfers/batch", json=too_much, headers=_h(w["op"], "b3"))
    assert r.status_code == 409
    assert r.json()["account_ids"] == [w["a"]]
    assert await _count(db) == before
    assert await _balance(db, w["a"]) == 50
    assert await _balance(db, w["b"]) == 100


async def test_history_pagination_over_http(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _setup(db, app)
    for n in range(5):
        body = {"debit_account_id": w["a"], "credit_account_id": w["b"], "amount": 1, "kind": "x"}
        await client.post("/api/v1/transfers", json=body, headers=_h(w["op"], f"p{n}"))
    ids: list[int] = []
    cursor = ""
    while True:
        r = await client.get(
            f"/api/v1/me/transfers?cursor={cursor}&limit=2", headers=w["alice"].headers
        )
        assert r.status_code == 200
        page = r.json()
        ids.extend(t["id"] for t in page["items"])
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert len(ids) == 6
    assert ids == sorted(ids, reverse=True)
    r = await client.get(f"/api/v1/accounts/{w['b']}/transfers?limit=3", headers=w["op"].headers)
    assert len(r.json()["items"]) == 3
    assert r.json()["next_cursor"] is not None
    r = await client.get("/api/v1/me/transfers?cursor=abc", headers=w["alice"].headers)
    assert r.status_code == 422
    r = await client.get("/api/v1/me/transfers?limit=0", headers=w["alice"].headers)
    assert r.status_code == 422


async def test_operator_opens_accounts(db: Database, app: Any, client: httpx.AsyncClient) -> None:
    w = await _setup(db, app)
    merchant = await make_merchant(db, code="OPEN")
    body = {"owner_type": "merchant", "owner_id": merchant.id, "asset": "CNY"}
    r1 = await client.post("/api/v1/accounts", json=body, headers=w["op"].headers)
    r2 = await client.post("/api/v1/accounts", json=body, headers=w["op"].headers)
    assert r1.status_code == 200
    assert r1.json()["id"] == r2.json()["id"]
    r = await client.post("/api/v1/accounts", json=body, headers=w["alice"].headers)
    assert r.status_code == 403
