"""The statements of ledger batch transfers, for ``ledger.service.batch_transfer`` only.

Same promises as ``ledger.repository`` (row locks in ascending account id, balances changed
only by conditional UPDATEs); the contract is stated and kept by the service.

- PostgreSQL: a fixed number of round trips whatever the batch size: one look-up of the keys,
  the new rows by ``COPY`` in a savepoint (``INSERT … SELECT FROM unnest(...) ON CONFLICT``
  when a concurrent batch committed one of the keys meanwhile), one ordered lock of the touched
  accounts, one ``UPDATE … FROM unnest(...)`` of the net changes.
- SQLite: one writer at a time (``BEGIN IMMEDIATE``): a key looked up as free stays free until
  this transaction ends; rows by executemany.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import one_of
from incentive.ledger.models import TRANSFER_COLUMNS, Account, Transfer
from incentive.ledger.repository import NewTransfer, add, bounds, is_postgres


async def insert_transfers(
    session: AsyncSession,
    items: Sequence[NewTransfer],
    metas: Sequence[dict[str, Any]],
    assets: Sequence[str],
    now: datetime,
) -> list[str]:
    """Insert the transfers whose key is new; returns the keys that already existed (their
    rows untouched), in the order of ``items``. Callers pass items in key order so that
    concurrent batches sharing keys claim them in one order."""
    if not is_postgres(session):
        return await _sqlite_insert(session, items, metas, assets, now)
    if len(items) < COPY_FROM:
        return await _pg_insert_on_conflict(session, items, metas, assets, now)
    return await _pg_insert(session, items, metas, assets, now)


# Below this many rows one ``INSERT … ON CONFLICT`` (one round trip) beats the look-up, the
# savepoint and the COPY (four): a rebated payment's two or three transfers, say.
COPY_FROM = 100


_PG_BATCH_INSERT = text(
    """
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:keys AS varchar[]), CAST(:debits AS bigint[]), CAST(:credits AS bigint[]),
            CAST(:amounts AS bigint[]), CAST(:assets AS varchar[]), CAST(:kinds AS varchar[]),
            CAST(:refs AS varchar[]), CAST(:metas AS text[])
        ) AS i(k, debit, credit, amount, asset, kind, ref, meta)
    ), ins AS (
        INSERT INTO transfers (idempotency_key, debit_account_id, credit_account_id, amount,
                               asset, kind, reference, metadata, created_at)
        SELECT k, debit, credit, amount, asset, kind, ref, CAST(meta AS json), :now FROM input
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING idempotency_key
    )
    SELECT k FROM input WHERE (SELECT count(*) FROM ins) < :n
        AND k NOT IN (SELECT idempotency_key FROM ins)
    """
)


_PG_EXISTING_KEYS = text(
    "SELECT idempotency_key FROM transfers WHERE idempotency_key = ANY(CAST(:keys AS varchar[]))"
)


async def _pg_insert(
    session: AsyncSession,
    items: Sequence[NewTransfer],
    metas: Sequence[dict[str, Any]],
    assets: Sequence[str],
    now: datetime,
) -> list[str]:
    """COPY the rows whose key is not in the table (one look-up of all keys first), in a
    savepoint; COPY writes rows in bulk at about twice the rate of ``INSERT … ON CONFLICT``.
    A key inserted meanwhile by a concurrent transaction makes the COPY wait on the unique
    index, then fail once that transaction commits: the savepoint is rolled back and the
    ``INSERT … ON CONFLICT DO NOTHING`` form settles which keys exist."""
    conn = await session.connection()
    keys = [i.idempotency_key for i in items]
    existing = {str(r[0]) for r in await conn.execute(_PG_EXISTING_KEYS, {"keys": keys})}
    records = [
        (
            i.idempotency_key,
            i.debit_account_id,
            i.credit_account_id,
            i.amount,
            asset,
            i.kind,
            i.reference,
            json.dumps(meta) if meta else "{}",
            now,
        )
        for i, meta, asset in zip(items, metas, assets, strict=True)
        if i.idempotency_key not in existing
    ]
    if not records:
        return keys
    try:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        async with driver.transaction():  # inside the unit of work's: a savepoint
            await driver.copy_records_to_table(
                "transfers", records=records, columns=TRANSFER_COLUMNS
            )
    except asyncpg.UniqueViolationError:
        return await _pg_insert_on_conflict(session, items, metas, assets, now)
    return [k for k in keys if k in existing]


async def _pg_insert_on_conflict(
    session: AsyncSession,
    items: Sequence[NewTransfer],
    metas: Sequence[dict[str, Any]],
    assets: Sequence[str],
    now: datetime,
) -> list[str]:
    rows = await session.execute(
        _PG_BATCH_INSERT,
        {
            "keys": [i.idempotency_key for i in items],
            "debits": [i.debit_account_id for i in items],
            "credits": [i.credit_account_id for i in items],
            "amounts": [i.amount for i in items],
            "assets": list(assets),
            "kinds": [i.kind for i in items],
            "refs": [i.reference for i in items],
            "metas": [json.dumps(m) if m else "{}" for m in metas],
            "now": now,
            "n": len(items),
        },
    )
    return [str(r[0]) for r in rows]


async def _sqlite_insert(
    session: AsyncSession,
    items: Sequence[NewTransfer],
    metas: Sequence[dict[str, Any]],
    assets: Sequence[str],
    now: datetime,
) -> list[str]:
    # SQLite runs one writer at a time (BEGIN IMMEDIATE), so no other transaction can insert
    # one of these keys between the look-up and the insert.
    keys = [i.idempotency_key for i in items]
    existing: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        found = await session.execute(
            select(Transfer.idempotency_key).where(Transfer.idempotency_key.in_(chunk))
        )
        existing.update(str(k) for k in found.scalars())
    rows = [
        {
            "idempotency_key": i.idempotency_key,
            "debit_account_id": i.debit_account_id,
            "credit_account_id": i.credit_account_id,
            "amount": i.amount,
            "asset": asset,
            "kind": i.kind,
            "reference": i.reference,
            "metadata": meta,
            "created_at": now,
        }
        for i, meta, asset in zip(items, metas, assets, strict=True)
        if i.idempotency_key not in existing
    ]
    if rows:
        await session.execute(cast(Table, Transfer.__table__).insert(), rows)
    return [k for k in keys if k in existing]


_PG_APPLY_DELTAS = text(
    """
    UPDATE accounts AS a SET balance = a.balance + d.delta
    FROM unnest(
        CAST(:ids AS bigint[]), CAST(:deltas AS bigint[]), CAST(:floors AS bigint[]),
        CAST(:negative_floors AS bigint[]), CAST(:ceilings AS bigint[])
    ) AS d(id, delta, floor, negative_floor, ceiling)
    WHERE a.id = d.id AND a.balance <= d.ceiling
      AND (a.balance >= d.floor OR (a.allow_negative AND a.balance >= d.negative_floor))
    RETURNING a.id
    """
)


async def apply_deltas(session: AsyncSession, deltas: dict[int, int]) -> list[int]:
    """Add each account's delta (|delta| <= 2^62) to its balance unless that takes an account
    without ``allow_negative`` below zero or any balance out of ``[BALANCE_MIN, BALANCE_MAX]``;
    returns those refused accounts' ids, ascending (the others are changed: the caller rolls
    back its savepoint when any was refused). Row locks are taken in ascending account id."""
    ids = sorted(deltas)
    if not is_postgres(session):
        updated = {i for i in ids if await add(session, i, deltas[i])}
    else:
        # Row locks in id order first; the UPDATE's own join order is up to the planner.
        await session.execute(
            select(Account.id)
            .where(one_of(session, Account.id, ids))
            .order_by(Account.id)
            .with_for_update(key_share=True)
        )
        limits = [bounds(deltas[i]) for i in ids]
        rows = await session.execute(
            _PG_APPLY_DELTAS,
            {
                "ids": ids,
                "deltas": [deltas[i] for i in ids],
                "floors": [b.floor for b in limits],
                "negative_floors": [b.negative_floor for b in limits],
                "ceilings": [b.ceiling for b in limits],
            },
        )
        updated = {int(r[0]) for r in rows}
    return [i for i in ids if i not in updated]
