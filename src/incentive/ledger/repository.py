"""The ledger's locking and dialect-specific statements, for ``ledger.service`` only.

Every statement that claims a key, takes a row lock or changes a balance lives here, with its
PostgreSQL and SQLite forms side by side, and the account look-ups the service reuses. The
contracts (idempotency, lock order, all or nothing) are stated and kept by the service
functions; this module only promises to take row locks in ascending account id and to change
balances with conditional UPDATEs.

- PostgreSQL: a single transfer in two statements (key, row and account locks; then both
  balances); row locks ``FOR NO KEY UPDATE`` in id order before balances move. Batches:
  ``ledger.batch_statements``.
- SQLite: one writer at a time (``BEGIN IMMEDIATE``), so no row locks are needed and a key
  looked up as free stays free until this transaction ends.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Select, and_, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from incentive.db import insert, one_of
from incentive.ledger.models import (
    BALANCE_MAX,
    BALANCE_MIN,
    TRANSFER_COLUMNS,
    Account,
    Transfer,
)


class NewTransfer(Protocol):
    """The columns of a transfer that the caller chooses (``service.TransferItem``)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def debit_account_id(self) -> int: ...
    @property
    def credit_account_id(self) -> int: ...
    @property
    def amount(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def reference(self) -> str: ...


class AccountFacts(NamedTuple):
    id: int
    asset: str
    allow_negative: bool


def _is_sqlite(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --------------------------------------------------------------------------- accounts


async def insert_account(session: AsyncSession, values: dict[str, Any]) -> Account:
    """Insert the account unless ``(owner_type, owner_id, asset, name)`` exists; the row either
    way. Two concurrent callers get the same row (the second insert waits, then does nothing).
    """
    await session.execute(
        insert(session, Account)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["owner_type", "owner_id", "asset", "name"])
    )
    return (
        await session.execute(
            _by_owner(values["owner_type"], values["owner_id"], values["asset"], values["name"])
        )
    ).scalar_one()


async def account_by_owner(
    session: AsyncSession, owner_type: str, owner_id: str, asset: str, name: str
) -> Account | None:
    """The account as stored now (never a stale identity-map copy), or None."""
    return (
        await session.execute(_by_owner(owner_type, owner_id, asset, name))
    ).scalar_one_or_none()


def _by_owner(owner_type: str, owner_id: str, asset: str, name: str) -> Select[Account]:
    return (
        select(Account)
        .where(
            Account.owner_type == owner_type,
            Account.owner_id == owner_id,
            Account.asset == asset,
            Account.name == name,
        )
        .execution_options(populate_existing=True)
    )


async def open_main_accounts(
    session: AsyncSession, owner_type: str, owner_ids: list[str], asset: str, now: datetime
) -> dict[str, int]:
    """Insert the missing ``main`` accounts of ``owner_ids`` (in the given order, which the
    caller sorts) and return owner id -> account id. On PostgreSQL one read when every owner
    has the account already (the usual case: a reward or a rebate to a known customer), else
    the read, one insert of the missing and one read of them; on SQLite one insert and one
    read."""
    if _is_sqlite(session):
        await session.execute(
            insert(session, Account).on_conflict_do_nothing(
                index_elements=["owner_type", "owner_id", "asset", "name"]
            ),
            [
                {
                    "owner_type": owner_type,
                    "owner_id": o,
                    "asset": asset,
                    "name": "main",
                    "balance": 0,
                    "allow_negative": False,
                    "created_at": now,
                }
                for o in owner_ids
            ],
        )
        rows = await session.execute(
            select(Account.owner_id, Account.id).where(
                Account.owner_type == owner_type,
                Account.asset == asset,
                Account.name == "main",
                Account.owner_id.in_(owner_ids),
            )
        )
    else:
        params = {"owner_type": owner_type, "owners": owner_ids, "asset": asset}
        found = {str(r[0]): r[1] for r in await session.execute(_PG_FIND_ACCOUNTS, params)}
        missing = [o for o in owner_ids if found.get(o) is None]
        if missing:
            # Read again in a statement of its own: it sees a row a concurrent opener
            # committed while the insert waited for it (the insert then skipped it).
            params["owners"] = missing
            await session.execute(_PG_OPEN_ACCOUNTS, {**params, "now": now})
            found.update(
                (str(r[0]), r[1]) for r in await session.execute(_PG_FIND_ACCOUNTS, params)
            )
        return {o: int(i) for o, i in found.items()}
    return {str(r[0]): int(r[1]) for r in rows}


_PG_OPEN_ACCOUNTS = text(
    """
    INSERT INTO accounts (owner_type, owner_id, asset, name, balance, allow_negative, created_at)
    SELECT :owner_type, o, :asset, 'main', 0, false, :now
    FROM unnest(CAST(:owners AS varchar[])) WITH ORDINALITY AS u(o, n) ORDER BY n
    ON CONFLICT (owner_type, owner_id, asset, name) DO NOTHING
    """
)

# One unique-index probe per owner, whatever the planner believes: the plain form
# ``owner_id = ANY(:owners)`` became a filter over every user account when the table's
# statistics were stale (a fresh table, autovacuum off), 100x slower at 30,000 accounts.
_PG_FIND_ACCOUNTS = text(
    """
    SELECT u.o, (SELECT a.id FROM accounts AS a
                 WHERE a.owner_type = :owner_type AND a.owner_id = u.o
                   AND a.asset = :asset AND a.name = 'main')
    FROM unnest(CAST(:owners AS varchar[])) AS u(o)
    """
)


async def account_facts(session: AsyncSession, ids: set[int]) -> dict[int, AccountFacts]:
    """Asset and ``allow_negative`` of the accounts among ``ids`` that exist (no lock)."""
    found: dict[int, AccountFacts] = {}
    wanted = sorted(ids)
    for start in range(0, len(wanted), 5000):
        rows = await session.execute(
            select(Account.id, Account.asset, Account.allow_negative).where(
                one_of(session, Account.id, wanted[start : start + 5000])
            )
        )
        for r in rows:
            found[int(r.id)] = AccountFacts(int(r.id), str(r.asset), bool(r.allow_negative))
    return found


# --------------------------------------------------------------------------- one transfer


async def claim_transfer(
    session: AsyncSession, item: NewTransfer, meta: dict[str, Any], now: datetime
) -> tuple[int, str] | None:
    """Insert the transfer row if both accounts exist, hold the same asset and the key is new;
    its ``(id, asset)``, else None and nothing written.

    One statement validates the accounts and claims the key: a concurrent claim of the same
    key waits on the unique index until this transaction ends.
    """
    debit = aliased(Account)
    credit = aliased(Account)
    source = select(
        literal(item.idempotency_key, Transfer.idempotency_key.type),
        debit.id,
        credit.id,
        literal(item.amount, Transfer.amount.type),
        debit.asset,
        literal(item.kind, Transfer.kind.type),
        literal(item.reference, Transfer.reference.type),
        literal(meta, Transfer.meta.type),
        literal(now, Transfer.created_at.type),
    ).where(
        debit.id == item.debit_account_id,
        credit.id == item.credit_account_id,
        debit.asset == credit.asset,
    )
    stmt = (
        insert(session, Transfer)
        .from_select(
            list(TRANSFER_COLUMNS),
            source,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Transfer.id, Transfer.asset)
    )
    inserted = (await session.execute(stmt)).first()
    return None if inserted is None else (int(inserted[0]), str(inserted[1]))


# A transfer on PostgreSQL in two round trips, in the contract's lock order. First the key
# (unique index: a concurrent claim of it waits here until the holder's transaction ends) and
# both account rows in ascending id (``ORDER BY … FOR NO KEY UPDATE``, only once the row is
# inserted: nothing is locked when the key exists or an account is missing or of another
# asset). Then both guarded balance changes in one UPDATE: a statement of its own, so its
# snapshot already holds the rows' latest versions (in the first statement, an UPDATE of a
# row the CTE had just locked could queue behind a waiter for that row: a deadlock).
_PG_CLAIM_AND_LOCK = text(
    """
    WITH ins AS (
        INSERT INTO transfers (idempotency_key, debit_account_id, credit_account_id, amount,
                               asset, kind, reference, metadata, created_at)
        SELECT :key, d.id, c.id, :amount, d.asset, :kind, :reference, CAST(:meta AS json), :now
        FROM accounts AS d JOIN accounts AS c ON c.id = :credit AND c.asset = d.asset
        WHERE d.id = :debit
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, asset
    ), locked AS (
        SELECT a.id FROM accounts AS a
        WHERE a.id IN (:debit, :credit) AND EXISTS (SELECT 1 FROM ins)
        ORDER BY a.id
        FOR NO KEY UPDATE
    )
    SELECT ins.id, ins.asset, (SELECT count(*) FROM locked) AS locked FROM ins
    """
)
_PG_MOVE_BOTH = text(
    """
    UPDATE accounts AS a SET balance = a.balance + ch.delta
    FROM (VALUES (CAST(:debit AS bigint), CAST(:debit_delta AS bigint),
                  CAST(:debit_floor AS bigint), CAST(:debit_negative_floor AS bigint),
                  CAST(:debit_ceiling AS bigint)),
                 (CAST(:credit AS bigint), CAST(:credit_delta AS bigint),
                  CAST(:credit_floor AS bigint), CAST(:credit_negative_floor AS bigint),
                  CAST(:credit_ceiling AS bigint))
         ) AS ch (id, delta, floor, negative_floor, ceiling)
    WHERE a.id = ch.id AND a.balance <= ch.ceiling
      AND (a.balance >= ch.floor OR (a.allow_negative AND a.balance >= ch.negative_floor))
    RETURNING a.id
    """
)


class Moved(NamedTuple):
    """A transfer row written by ``claim_and_move``: its id and asset, and the
    account refused by its bound (None: both balances moved; else neither did)."""

    transfer_id: int
    asset: str
    refused: int | None


async def claim_and_move(
    session: AsyncSession, item: NewTransfer, meta: dict[str, Any], now: datetime
) -> Moved | None:
    """PostgreSQL: claim the key with the transfer row, lock both accounts in id order, then
    move both balances: two round trips. None (nothing written, nothing locked) when the key
    exists or the accounts are missing or hold different assets. When a bound refuses, no
    balance is left changed (a side that moved is put back under our row lock) and the caller
    removes the transfer row; a refused debit is the one reported, as if it went first."""
    conn = await session.connection()
    row = (
        await conn.execute(
            _PG_CLAIM_AND_LOCK,
            {
                "key": item.idempotency_key,
                "debit": item.debit_account_id,
                "credit": item.credit_account_id,
                "amount": item.amount,
                "kind": item.kind,
                "reference": item.reference,
                "meta": json.dumps(meta),
                "now": now,
            },
        )
    ).first()
    if row is None:
        return None
    debit, credit = bounds(-item.amount), bounds(item.amount)
    moved = {
        int(r[0])
        for r in await conn.execute(
            _PG_MOVE_BOTH,
            {
                "debit": item.debit_account_id,
                "debit_delta": -item.amount,
                "debit_floor": debit.floor,
                "debit_negative_floor": debit.negative_floor,
                "debit_ceiling": debit.ceiling,
                "credit": item.credit_account_id,
                "credit_delta": item.amount,
                "credit_floor": credit.floor,
                "credit_negative_floor": credit.negative_floor,
                "credit_ceiling": credit.ceiling,
            },
        )
    }
    if len(moved) == 2:
        return Moved(int(row.id), str(row.asset), None)
    if item.credit_account_id in moved:
        await _put_back(session, item.credit_account_id, -item.amount)
    elif item.debit_account_id in moved:
        await _put_back(session, item.debit_account_id, item.amount)
    refused = item.credit_account_id if item.debit_account_id in moved else item.debit_account_id
    return Moved(int(row.id), str(row.asset), refused)


async def write_transfer(
    session: AsyncSession, item: NewTransfer, meta: dict[str, Any], now: datetime
) -> Moved | None:
    """Claim the key with the transfer row and move both balances (``claim_and_move`` on
    PostgreSQL; ``claim_transfer`` then ``move_balance`` on SQLite). None, nothing written,
    when the key exists or the accounts are missing or hold different assets; a ``refused``
    account means no balance is left changed and the caller removes the row."""
    if is_postgres(session):
        return await claim_and_move(session, item, meta, now)
    claimed = await claim_transfer(session, item, meta, now)
    if claimed is None:
        return None
    debit, credit = item.debit_account_id, item.credit_account_id
    return Moved(*claimed, await move_balance(session, debit, credit, item.amount))


async def _put_back(session: AsyncSession, account_id: int, delta: int) -> None:
    """Undo this transaction's own change of a balance (its row is locked by us: no overflow)."""
    await session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + delta)
        .execution_options(synchronize_session=False)
    )


class Bounds(NamedTuple):
    """The balances from which adding ``delta`` stays in range, as parameters computed in
    Python: the guard itself never adds, so it cannot overflow in SQL."""

    floor: int  # lowest balance an account without allow_negative may hold before the change
    negative_floor: int  # lowest for an allow_negative account
    ceiling: int  # highest for any account


def bounds(delta: int) -> Bounds:
    """``balance + delta`` stays within ``[0 or BALANCE_MIN, BALANCE_MAX]`` exactly when the
    balance is within these bounds (|delta| must not exceed 2^62)."""
    return Bounds(
        floor=-delta,
        negative_floor=max(BALANCE_MIN, BALANCE_MIN - delta),
        ceiling=min(BALANCE_MAX, BALANCE_MAX - delta),
    )


def _within(b: Bounds) -> Any:
    return and_(
        Account.balance <= b.ceiling,
        or_(
            Account.balance >= b.floor,
            and_(Account.allow_negative, Account.balance >= b.negative_floor),
        ),
    )


async def move_balance(
    session: AsyncSession, debit_account_id: int, credit_account_id: int, amount: int
) -> int | None:
    """Debit then credit ``amount`` with guarded UPDATEs; None, or the id of the refused
    account with no balance changed.

    The debit is refused when the account is not ``allow_negative`` and holds less, or would
    go below ``BALANCE_MIN``; the credit when it would go above ``BALANCE_MAX`` (the debit is
    then undone under the row lock this transaction holds). Row locks are taken in ascending
    account id."""
    if credit_account_id < debit_account_id and not _is_sqlite(session):
        # Keep the id order of row locks: take the credit row first, change it after the debit.
        await session.execute(
            select(Account.id)
            .where(Account.id == credit_account_id)
            .with_for_update(key_share=True)
        )
    if not await add(session, debit_account_id, -amount):
        return debit_account_id
    if not await add(session, credit_account_id, amount):
        await _put_back(session, debit_account_id, amount)
        return credit_account_id
    return None


async def add(session: AsyncSession, account_id: int, delta: int) -> bool:
    """One conditional UPDATE: add ``delta`` if the balance stays in range; False otherwise."""
    changed = (
        await session.execute(
            update(Account)
            .where(Account.id == account_id, _within(bounds(delta)))
            .values(balance=Account.balance + delta)
            .returning(Account.id)
            .execution_options(synchronize_session=False)
        )
    ).first()
    return changed is not None
