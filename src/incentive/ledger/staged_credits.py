"""Credits from rows already in the database: the set-based form of ``batch_transfer`` for a
caller whose transfers are rows of its own table (a staged points file), PostgreSQL only.

``credit_owners_from`` pays one debit account into the ``main`` account of each owner that a
query selects, in a fixed number of statements whatever the row count: the owners' accounts
opened (one ``INSERT … SELECT … ON CONFLICT DO NOTHING``, owners in sorted order), the
transfers written (one ``INSERT … SELECT``, keys in sorted order, their per-account sums
returned), then the balances changed by ``batch_statements.apply_deltas`` (row locks in id order,
guarded bounds). Nothing goes through Python per transfer.

It keeps ``batch_transfer``'s contract for the rows it writes — all or nothing, checked on the
net effect (``InsufficientFunds``/``BalanceLimit`` raised, nothing written), keys claimed in
sorted order, account rows locked in id order — and leaves to ``batch_transfer`` the cases
that need a look at each item: when a key already exists, or a row is not a valid transfer
(amount, key or reference out of bounds, owner id not 1-64 characters, the debit account
itself), nothing is written and ``None`` is returned, so the caller decides those rows one
by one with ``batch_transfer`` (which tells a replay from a reused key).
"""

from __future__ import annotations

from sqlalchemy import Select, func, literal, select, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import utcnow
from incentive.errors import InvalidField
from incentive.ledger import batch_statements, repository
from incentive.ledger.metrics import TRANSFERS
from incentive.ledger.models import Account, Transfer
from incentive.ledger.service import (
    MAX_AMOUNT,
    MAX_BATCH_DELTA,
    MAX_KEY_LENGTH,
    MAX_REFERENCE_LENGTH,
    _refuse,
)


class _NotSetBased(Exception):
    """Rolls the savepoint back when a row needs ``batch_transfer``'s item-by-item look."""


async def credit_owners_from(
    session: AsyncSession,
    source: Select[tuple[str, str, int, str]],
    *,
    debit_account_id: int,
    owner_type: str,
    asset: str,
    kind: str,
) -> int | None:
    """Move each row's ``amount`` from ``debit_account_id`` to the ``main`` ``asset`` account
    of its ``owner_id`` (opened if missing, never negative), all or nothing.

    ``source`` selects ``idempotency_key``, ``owner_id``, ``amount``, ``reference`` (those
    labels). Returns the number of transfers written, or ``None`` with nothing written when a
    key already exists or a row is not a valid transfer (see the module). The debit account
    must hold ``asset``; the transfers carry ``kind`` and empty metadata.
    """
    debit = (await repository.account_facts(session, {debit_account_id})).get(debit_account_id)
    if debit is None or debit.asset != asset:
        return None
    now = utcnow()
    src = source.cte("credit_source")
    try:
        async with session.begin_nested():
            await session.execute(
                pg_insert(Account)
                .from_select(
                    ["owner_type", "owner_id", "asset", "name", "balance", "allow_negative"]
                    + ["created_at"],
                    select(
                        literal(owner_type),
                        src.c.owner_id,
                        literal(asset),
                        literal("main"),
                        literal(0),
                        literal(False),
                        literal(now, Account.created_at.type),
                    )
                    .where(func.length(src.c.owner_id).between(1, 64))
                    .distinct()
                    .order_by(src.c.owner_id),
                )
                .on_conflict_do_nothing(index_elements=["owner_type", "owner_id", "asset", "name"])
            )
            # The account by a probe of its unique index per row, whatever the planner thinks
            # of the table's statistics (a join was planned as a filter over every account).
            account = (
                select(Account.id)
                .where(
                    Account.owner_type == owner_type,
                    Account.owner_id == src.c.owner_id,
                    Account.asset == asset,
                    Account.name == "main",
                )
                .scalar_subquery()
            )
            resolved = select(
                src.c.idempotency_key, src.c.amount, src.c.reference, account.label("account_id")
            ).cte("resolved")
            credit = select(
                resolved.c.idempotency_key,
                literal(debit_account_id, Transfer.debit_account_id.type),
                resolved.c.account_id,
                resolved.c.amount,
                literal(asset, Transfer.asset.type),
                literal(kind, Transfer.kind.type),
                resolved.c.reference,
                literal({}, Transfer.meta.type),
                literal(now, Transfer.created_at.type),
            )
            written = (
                pg_insert(Transfer)
                .from_select(
                    ["idempotency_key", "debit_account_id", "credit_account_id", "amount"]
                    + ["asset", "kind", "reference", "metadata", "created_at"],
                    credit.where(
                        resolved.c.account_id.is_not(None),
                        resolved.c.account_id != debit_account_id,
                        resolved.c.amount.between(1, MAX_AMOUNT),
                        func.length(resolved.c.idempotency_key).between(1, MAX_KEY_LENGTH),
                        func.length(resolved.c.reference) <= MAX_REFERENCE_LENGTH,
                    ).order_by(resolved.c.idempotency_key),
                )
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
                .returning(Transfer.credit_account_id, Transfer.amount)
                .cte("written")
            )
            # One row for the source's size (account NULL), one per credited account.
            rows = await session.execute(
                union_all(
                    select(literal(None).label("account_id"), literal(0), func.count()).select_from(
                        src
                    ),
                    select(written.c.credit_account_id, func.sum(written.c.amount), func.count())
                    .select_from(written)
                    .group_by(written.c.credit_account_id),
                )
            )
            wanted = created = 0
            deltas: dict[int, int] = {}
            for account_id, total, count in rows:
                if account_id is None:
                    wanted = int(count)
                else:
                    deltas[int(account_id)] = int(total)
                    created += int(count)
            if created != wanted:
                raise _NotSetBased
            moved = sum(deltas.values())
            if moved:
                deltas[debit_account_id] = -moved
            for account_id, delta in deltas.items():
                if abs(delta) > MAX_BATCH_DELTA:
                    raise InvalidField("items", "net-change-limit", f"account {account_id}")
            if deltas:
                refused = await batch_statements.apply_deltas(session, dict(deltas))
                if refused:
                    facts = await repository.account_facts(session, set(refused))
                    short = [i for i in refused if deltas[i] < 0 and not facts[i].allow_negative]
                    _refuse("the batch", refused, short)
    except _NotSetBased:
        return None
    TRANSFERS.labels(asset, "batch").inc(created)
    return created
