"""A balance is always an integer within BIGINT: a transfer or batch that would leave that range
is refused with 409 ``balance-limit`` and writes nothing (issue 10 item 5).

Balances are driven to the edge by real transfers (batches of at most ``MAX_AMOUNT`` each), so
every account still reconciles: balance = credits - debits of its transfers.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from incentive.db import Database
from incentive.ledger import service as ledger
from incentive.ledger.errors import BalanceLimit, InsufficientFunds
from tests.factories import Actor, make_user
from tests.ledger.reconcile import BIGINT_MAX, BIGINT_MIN, reconciled_balances

CHUNK = 4_000  # items per batch: 4,000 x MAX_AMOUNT stays under the batch's net-change cap


async def _accounts(db: Database, *owners: str) -> list[int]:
    """The issuer (allow_negative) first, then one user account per owner."""
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        users = [
            await ledger.open_account(s, owner_type="user", owner_id=o, asset="POINTS")
            for o in owners
        ]
    return [issuer.id, *(u.id for u in users)]


async def _funding(db: Database, owner: str) -> int:
    async with db.unit_of_work() as s:
        account = await ledger.open_account(
            s, owner_type="partner", owner_id=owner, asset="POINTS", allow_negative=True
        )
    return account.id


async def _pay(db: Database, debit: int, credit: int, total: int, prefix: str) -> None:
    """Move ``total`` as batches of transfers of at most ``MAX_AMOUNT`` each."""
    amounts = [ledger.MAX_AMOUNT] * (total // ledger.MAX_AMOUNT)
    if total % ledger.MAX_AMOUNT:
        amounts.append(total % ledger.MAX_AMOUNT)
    for start in range(0, len(amounts), CHUNK):
        items = [
            ledger.TransferItem(f"{prefix}-{start + n}", debit, credit, amount, "funding")
            for n, amount in enumerate(amounts[start : start + CHUNK])
        ]
        async with db.unit_of_work() as s:
            await ledger.batch_transfer(s, items)


async def _state(db: Database) -> tuple[int, dict[int, int]]:
    return await reconciled_balances(db)


async def _single(db: Database, key: str, debit: int, credit: int, amount: int) -> None:
    async with db.unit_of_work() as s:
        await ledger.transfer(
            s,
            idempotency_key=key,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=amount,
            kind="move",
        )


async def _batch(db: Database, *items: tuple[str, int, int, int]) -> None:
    async with db.unit_of_work() as s:
        await ledger.batch_transfer(s, [ledger.TransferItem(*i, "move") for i in items])


async def test_credit_beyond_bigint_is_refused_and_writes_nothing(db: Database) -> None:
    issuer, full, other = await _accounts(db, "full", "other")
    partner = await _funding(db, "partner")  # far from its own limit, unlike the issuer
    await _pay(db, issuer, full, BIGINT_MAX - 5, "fill")
    await _single(db, "to-the-brim", partner, full, 5)  # exactly BIGINT_MAX is a balance
    before = await _state(db)
    assert before[1][full] == BIGINT_MAX

    with pytest.raises(BalanceLimit) as single:
        await _single(db, "one-more", partner, full, 1)
    assert single.value.extra["account_id"] == full
    assert await _state(db) == before
    with pytest.raises(BalanceLimit) as batch:
        await _batch(db, ("b-other", partner, other, 3), ("b-full", partner, full, 1))
    assert batch.value.extra["account_ids"] == [full]
    assert await _state(db) == before
    # The refused key stays free, and the full account can still pay.
    await _single(db, "one-more", full, other, 1)
    count, balances = await _state(db)
    assert count == before[0] + 1
    assert (balances[full], balances[other]) == (BIGINT_MAX - 1, 1)


async def test_a_caller_catching_a_refused_credit_carries_on_with_nothing_changed(
    db: Database,
) -> None:
    """The contract lets a caller catch the refusal and carry on in the same transaction: the
    debit side, which had room, is left as it was (not only after a rollback)."""
    issuer, full, other = await _accounts(db, "full", "other")
    partner = await _funding(db, "partner")
    await _pay(db, issuer, full, BIGINT_MAX, "fill")
    before = await _state(db)
    async with db.unit_of_work() as s:
        with pytest.raises(BalanceLimit):
            await ledger.transfer(
                s,
                idempotency_key="past-the-brim",
                debit_account_id=partner,
                credit_account_id=full,
                amount=7,
                kind="move",
            )
        await ledger.transfer(
            s,
            idempotency_key="instead",
            debit_account_id=partner,
            credit_account_id=other,
            amount=7,
            kind="move",
        )
    count, balances = await _state(db)
    assert count == before[0] + 1
    assert (balances[partner], balances[full], balances[other]) == (-7, BIGINT_MAX, 7)


async def test_debit_beyond_bigint_on_a_negative_account_is_refused(db: Database) -> None:
    issuer, a, b = await _accounts(db, "a", "b")
    await _pay(db, issuer, a, BIGINT_MAX, "fill")
    await _single(db, "last", issuer, b, 1)  # issuer exactly at BIGINT_MIN
    before = await _state(db)
    assert before[1][issuer] == BIGINT_MIN

    with pytest.raises(BalanceLimit) as single:
        await _single(db, "too-far", issuer, b, 1)
    assert single.value.extra["account_id"] == issuer
    assert await _state(db) == before
    with pytest.raises(BalanceLimit) as batch:
        await _batch(db, ("b-ok", a, b, 10), ("b-too-far", issuer, b, 7))
    assert batch.value.extra["account_ids"] == [issuer]
    assert await _state(db) == before
    # A shortfall on a non-negative account is still insufficient funds, not the limit.
    with pytest.raises(InsufficientFunds):
        await _single(db, "short", b, a, 2)
    assert await _state(db) == before


async def test_large_batches_over_http_stop_at_the_limit_and_balances_stay_readable(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    """The reported case: a few large batches drove two balances out of BIGINT on SQLite
    (stored as REAL, then every read of the account was a 500) and were a 500 on PostgreSQL."""
    op = await make_user(db, app, username="op", role="operator")
    alice: Actor = await make_user(db, app, username="alice")
    issuer, rich = await _accounts(db, alice.user.id)
    headers = {**op.headers}
    refused = 0
    for n in range(3):
        body = {
            "items": [
                {
                    "idempotency_key": f"big-{n}-{i}",
                    "debit_account_id": issuer,
                    "credit_account_id": rich,
                    "amount": ledger.MAX_AMOUNT,
                    "kind": "grant",
                }
                for i in range(4_600)
            ]
        }
        before = await _state(db)
        r = await client.post(
            "/api/v1/transfers/batch", json=body, headers={**headers, "Idempotency-Key": f"b{n}"}
        )
        if r.status_code == 409:
            refused += 1
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"].endswith("/balance-limit"), r.json()
            assert r.json()["status"] == 409
            # Both sides of the batch would leave BIGINT: the issuer below, alice above.
            assert r.json()["account_ids"] == sorted([issuer, rich])
            assert await _state(db) == before
        else:
            assert r.status_code == 200, r.text
    assert refused == 1  # 2 x 4.6e18 fits, a third batch would not
    count, balances = await _state(db)
    assert count == 2 * 4_600
    assert balances[rich] == 2 * 4_600 * ledger.MAX_AMOUNT

    r = await client.get(f"/api/v1/accounts/{rich}", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["balance"] == balances[rich]
    await _pay(db, issuer, rich, BIGINT_MAX - balances[rich], "top")
    count, balances = await _state(db)
    single = {"debit_account_id": issuer, "credit_account_id": rich, "amount": 1, "kind": "x"}
    r = await client.post(
        "/api/v1/transfers", json=single, headers={**headers, "Idempotency-Key": "s1"}
    )
    assert r.status_code == 409
    assert r.json()["type"].endswith("/balance-limit")
    assert await _state(db) == (count, balances)
