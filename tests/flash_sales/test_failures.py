"""The purchase when the database fails it, for real (issue 10, item 21):

- the insert fails (a trigger refuses it): the stock and the quota are given back exactly
  once, the buyer gets a 503 and can buy again;
- the commit's outcome is unknown (the connection is cut at commit on PostgreSQL; on SQLite
  the commit itself fails): nothing is given back — never oversold — and ``reconcile``
  returns exactly that stock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import text

from incentive.db import Database
from incentive.flash_sales import kind
from tests.flash_sales.conftest import Sales, make_customers
from tests.flash_sales.test_purchases import _committed, _gather

REFUSE_INSERT = {
    "sqlite": [
        "CREATE TRIGGER test_refuse_purchase BEFORE INSERT ON flash_sale_purchases "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION test_refuse_purchase() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        "CREATE TRIGGER test_refuse_purchase BEFORE INSERT ON flash_sale_purchases "
        "FOR EACH ROW EXECUTE FUNCTION test_refuse_purchase()",
    ],
}
UNDO_REFUSE_INSERT = {
    "sqlite": ["DROP TRIGGER IF EXISTS test_refuse_purchase"],
    "postgresql": [
        "DROP TRIGGER IF EXISTS test_refuse_purchase ON flash_sale_purchases",
        "DROP FUNCTION IF EXISTS test_refuse_purchase()",
    ],
}
# PostgreSQL: a deferred trigger, run inside COMMIT, kills its own backend: the connection is
# lost while committing. SQLite: a deferred foreign key that the insert breaks fails COMMIT.
FAIL_COMMIT = {
    "sqlite": [
        "CREATE TABLE test_commit_parent (id TEXT PRIMARY KEY)",
        "CREATE TABLE test_commit_guard (ref TEXT REFERENCES test_commit_parent(id) "
        "DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER test_fail_commit AFTER INSERT ON flash_sale_purchases "
        "BEGIN INSERT INTO test_commit_guard VALUES ('missing'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION test_cut_connection() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER test_fail_commit AFTER INSERT ON flash_sale_purchases "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_cut_connection()",
    ],
}
UNDO_FAIL_COMMIT = {
    "sqlite": [
        "DROP TRIGGER IF EXISTS test_fail_commit",
        "DROP TABLE IF EXISTS test_commit_guard",
        "DROP TABLE IF EXISTS test_commit_parent",
    ],
    "postgresql": [
        "DROP TRIGGER IF EXISTS test_fail_commit ON flash_sale_purchases",
        "DROP FUNCTION IF EXISTS test_cut_connection()",
    ],
}


async def _run(db: Database, statements: list[str]) -> None:
    async with db.engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


@asynccontextmanager
async def _installed(
    db: Database, do: dict[str, list[str]], undo: dict[str, list[str]]
) -> AsyncIterator[None]:
    dialect = db.engine.dialect.name
    await _run(db, do[dialect])
    try:
        yield
    finally:
        await _run(db, undo[dialect])


def _compensations() -> float:
    return REGISTRY.get_sample_value("incentive_flash_sale_compensations_total") or 0.0


async def _quota(app: Any, sale: str, user_id: str) -> int:
    return int(await app.state.stock.quota_used(kind.pool_of(sale), user_id))


async def test_a_failed_insert_gives_stock_and_quota_back_exactly_once(
    sales: Sales, db: Database, app: Any
) -> None:
    sale = await sales.create(20, limit=3, buckets=4)
    buyers = await make_customers(db, app, 4)
    for b in buyers:
        assert (await sales.buy(b, sale, 1)).status_code == 201
    compensated = _compensations()
    async with _installed(db, REFUSE_INSERT, UNDO_REFUSE_INSERT):
        responses = await _gather(8, [sales.buy(b, sale, 2) for b in buyers for _ in range(2)])
    # Each buyer has 2 units of quota left and sent two requests of 2 at once: one held the
    # quota and failed at the insert; the other waited for it, then reached the insert too.
    assert [r.status_code for r in responses] == [503] * 8, [r.text[:80] for r in responses]
    assert all("could not be recorded" in r.json()["detail"] for r in responses)
    assert _compensations() - compensated == 8
    assert await _committed(db, sale) == (4, 4)
    assert (await sales.state(sale))["remaining"] == 16  # not 8 (kept), not 24 (twice)
    assert [await _quota(app, sale, b.user.id) for b in buyers] == [1, 1, 1, 1]
    # The buyers can buy what the failure gave back, and no more than their limit.
    assert [(await sales.buy(b, sale, 2)).status_code for b in buyers] == [201] * 4
    r = await sales.buy(buyers[0], sale, 1)
    assert r.json()["type"].endswith("/limit-exceeded")
    assert await _committed(db, sale) == (8, 12)
    assert (await sales.state(sale))["remaining"] == 8


async def test_a_commit_of_unknown_outcome_gives_nothing_back_until_reconcile(
    sales: Sales, db: Database, app: Any
) -> None:
    r = await sales.client.put(
        "/api/v1/config/flash_sale.drain_seconds",
        json={"value": 0.1},
        headers=sales.operator.headers,
    )
    assert r.status_code == 200
    sale = await sales.create(10, limit=5, buckets=2)
    (buyer,) = await make_customers(db, app, 1)
    assert (await sales.buy(buyer, sale, 1, key="first")).status_code == 201
    compensated = _compensations()
    async with _installed(db, FAIL_COMMIT, UNDO_FAIL_COMMIT):
        r = await sales.buy(buyer, sale, 2, key="unknown")
    assert r.status_code == 503, r.text
    assert "outcome unknown" in r.json()["detail"]
    # The commit did not happen, but the process cannot know: nothing was given back.
    assert await _committed(db, sale) == (1, 1)
    assert _compensations() == compensated
    assert (await sales.state(sale))["remaining"] == 7
    assert await _quota(app, sale, buyer.user.id) == 3
    r = await sales.client.post(
        f"/api/v1/flash-sales/{sale}/reconcile", headers=sales.operator.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["drift"] == 2
    assert sum(r.json()["after"]) == 9
    assert await _quota(app, sale, buyer.user.id) == 1
    # The retry the 503 asked for now buys, once.
    retried = await sales.buy(buyer, sale, 2, key="unknown")
    assert retried.status_code == 201, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    again = await sales.buy(buyer, sale, 2, key="unknown")
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert await _committed(db, sale) == (2, 3)
    assert (await sales.state(sale))["remaining"] == 7
