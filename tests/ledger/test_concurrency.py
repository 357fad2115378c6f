"""Many concurrent units of work, on both engines: money is conserved, nothing deadlocks, and
after every test each account reconciles (balance = credits - debits of its transfers).

SQLite runs one writer at a time (BEGIN IMMEDIATE), PostgreSQL takes row locks; both must
keep these guarantees under the same load (issue 10 item 20)."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import func, select

from incentive.db import Database
from incentive.ledger import service as ledger
from incentive.ledger.errors import BalanceLimit, InsufficientFunds
from incentive.ledger.models import Account, Transfer
from tests.ledger.reconcile import BIGINT_MAX, reconciled_balances

ACCOUNTS = 100
CLIENTS = 50
TRANSFERS_PER_CLIENT = 40
START_BALANCE = 1_000


async def _accounts(db: Database) -> list[int]:
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        ids = [
            (await ledger.open_account(s, owner_type="user", owner_id=f"u{n}", asset="POINTS")).id
            for n in range(ACCOUNTS)
        ]
        await ledger.batch_transfer(
            s,
            [ledger.TransferItem(f"seed{i}", issuer.id, i, START_BALANCE, "funding") for i in ids],
        )
    return ids


async def _totals(db: Database, ids: list[int]) -> tuple[int, int, int]:
    async with db.unit_of_work() as s:
        total, lowest = (
            await s.execute(
                select(func.sum(Account.balance), func.min(Account.balance)).where(
                    Account.id.in_(ids)
                )
            )
        ).one()
        count = (await s.execute(select(func.count()).select_from(Transfer))).scalar_one()
    return int(total), int(lowest), int(count)


async def test_random_concurrent_transfers_conserve_money(db: Database) -> None:
    ids = await _accounts(db)
    successes = 0
    refusals = 0

    async def client(n: int) -> None:
        nonlocal successes, refusals
        rnd = random.Random(n)
        for i in range(TRANSFERS_PER_CLIENT):
            debit, credit = rnd.sample(ids, 2)
            try:
                async with db.unit_of_work() as s:
                    await ledger.transfer(
                        s,
                        idempotency_key=f"c{n}-{i}",
                        debit_account_id=debit,
                        credit_account_id=credit,
                        amount=rnd.randint(1, 400),
                        kind="move",
                    )
                successes += 1
            except InsufficientFunds:
                refusals += 1

    # Any deadlock or serialisation error would escape a client and fail the gather.
    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(CLIENTS))), 120)
    total, lowest, count = await _totals(db, ids)
    assert successes + refusals == CLIENTS * TRANSFERS_PER_CLIENT
    assert successes > 0
    assert total == ACCOUNTS * START_BALANCE
    assert lowest >= 0
    assert count == ACCOUNTS + successes  # seed transfers + successful ones, nothing else
    await reconciled_balances(db)


async def test_concurrent_batches_and_transfers_do_not_deadlock(db: Database) -> None:
    ids = await _accounts(db)
    applied_items = 0
    singles = 0

    async def batcher(n: int) -> None:
        nonlocal applied_items
        rnd = random.Random(1000 + n)
        for b in range(5):
            items = []
            for i in range(50):
                debit, credit = rnd.sample(ids, 2)
                items.append(
                    ledger.TransferItem(f"b{n}-{b}-{i}", debit, credit, rnd.randint(1, 30), "move")
                )
            try:
                async with db.unit_of_work() as s:
                    result = await ledger.batch_transfer(s, items)
                # Read the counter only after the await: `x += await f()` loses updates.
                applied_items += result.created
            except InsufficientFunds:
                pass

    async def single(n: int) -> None:
        nonlocal singles
        rnd = random.Random(2000 + n)
        for i in range(20):
            debit, credit = rnd.sample(ids, 2)
            try:
                async with db.unit_of_work() as s:
                    await ledger.transfer(
                        s,
                        idempotency_key=f"s{n}-{i}",
                        debit_account_id=debit,
                        credit_account_id=credit,
                        amount=rnd.randint(1, 300),
                        kind="move",
                    )
                singles += 1
            except InsufficientFunds:
                pass

    await asyncio.wait_for(
        asyncio.gather(*(batcher(n) for n in range(10)), *(single(n) for n in range(20))), 120
    )
    total, lowest, count = await _totals(db, ids)
    assert total == ACCOUNTS * START_BALANCE
    assert lowest >= 0
    assert count == ACCOUNTS + applied_items + singles
    await reconciled_balances(db)


async def test_concurrent_identical_batches_apply_once(db: Database) -> None:
    ids = await _accounts(db)
    items = [ledger.TransferItem(f"same{i}", ids[i], ids[i + 1], 10, "move") for i in range(50)]

    async def run() -> ledger.BatchResult:
        async with db.unit_of_work() as s:
            return await ledger.batch_transfer(s, list(reversed(items)))

    results = await asyncio.gather(*(run() for _ in range(8)))
    assert sorted(r.created for r in results) == [0] * 7 + [50]
    total, lowest, count = await _totals(db, ids)
    assert count == ACCOUNTS + 50
    assert total == ACCOUNTS * START_BALANCE
    await reconciled_balances(db)


async def test_a_batch_waiting_on_keys_another_batch_commits_skips_them(db: Database) -> None:
    """The second batch looks its keys up while the first holds them uncommitted (on
    PostgreSQL its bulk write then waits on the unique index and fails once the first commits,
    and it settles the keys again): both answer, the shared items move value once, and the
    second batch's own item moves too."""
    ids = await _accounts(db)
    shared = [ledger.TransferItem(f"wait{i}", ids[i], ids[i + 1], 10, "move") for i in range(20)]
    own = ledger.TransferItem("own", ids[30], ids[31], 5, "move")
    first_written = asyncio.Event()

    async def first() -> ledger.BatchResult:
        async with db.unit_of_work() as s:
            result = await ledger.batch_transfer(s, shared)
            first_written.set()
            await asyncio.sleep(0.5)  # the second batch starts and waits meanwhile
            return result

    async def second() -> ledger.BatchResult:
        await first_written.wait()
        async with db.unit_of_work() as s:
            return await ledger.batch_transfer(s, [own, *shared])

    one, two = await asyncio.gather(first(), second())
    assert (one.created, one.skipped_keys) == (20, [])
    assert (two.created, two.skipped_keys) == (1, sorted(i.idempotency_key for i in shared))
    total, lowest, count = await _totals(db, ids)
    assert count == ACCOUNTS + 21
    assert total == ACCOUNTS * START_BALANCE
    async with db.unit_of_work() as s:
        balances = {i: (await ledger.get_account(s, i)).balance for i in (ids[0], ids[20], ids[31])}
    assert balances == {ids[0]: START_BALANCE - 10, ids[20]: START_BALANCE + 10, ids[31]: 1005}
    await reconciled_balances(db)


async def test_concurrent_open_account_returns_one_row(db: Database) -> None:
    async def run() -> int:
        async with db.unit_of_work() as s:
            acc = await ledger.open_account(s, owner_type="user", owner_id="race", asset="CNY")
            return acc.id

    assert len(set(await asyncio.gather(*(run() for _ in range(20))))) == 1


async def test_concurrent_credits_stop_exactly_at_the_balance_limit(db: Database) -> None:
    """Room for exactly 10 credits of 7 below BIGINT_MAX; 40 concurrent ones (singles and
    batches) from several funding accounts: 10 land, the rest get ``BalanceLimit``."""
    async with db.unit_of_work() as s:
        funders = [
            (
                await ledger.open_account(
                    s, owner_type="partner", owner_id=f"p{n}", asset="POINTS", allow_negative=True
                )
            ).id
            for n in range(4)
        ]
        target = (await ledger.open_account(s, owner_type="user", owner_id="t", asset="POINTS")).id
    filled = BIGINT_MAX - 10 * 7
    for n, start in enumerate(range(0, filled, 4_000 * ledger.MAX_AMOUNT)):
        part = min(4_000 * ledger.MAX_AMOUNT, filled - start)
        amounts = [ledger.MAX_AMOUNT] * (part // ledger.MAX_AMOUNT)
        if part % ledger.MAX_AMOUNT:
            amounts.append(part % ledger.MAX_AMOUNT)
        async with db.unit_of_work() as s:
            await ledger.batch_transfer(
                s,
                [
                    ledger.TransferItem(f"fill{n}-{i}", funders[n], target, a, "funding")
                    for i, a in enumerate(amounts)
                ],
            )
    landed = 0
    refused = 0

    async def credit(n: int) -> None:
        nonlocal landed, refused
        try:
            async with db.unit_of_work() as s:
                if n % 2:
                    await ledger.transfer(
                        s,
                        idempotency_key=f"c{n}",
                        debit_account_id=funders[n % 4],
                        credit_account_id=target,
                        amount=7,
                        kind="grant",
                    )
                else:
                    item = ledger.TransferItem(f"c{n}", funders[n % 4], target, 7, "grant")
                    await ledger.batch_transfer(s, [item])
            landed += 1
        except BalanceLimit:
            refused += 1

    await asyncio.wait_for(asyncio.gather(*(credit(n) for n in range(40))), 120)
    assert (landed, refused) == (10, 30)
    _, balances = await reconciled_balances(db)
    assert balances[target] == BIGINT_MAX
