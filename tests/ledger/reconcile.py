"""Reconciliation from outside the ledger's code: every balance is a BIGINT-range ``int`` equal
to the credits minus the debits of its account's transfers (summed in Python, unbounded)."""

from __future__ import annotations

from sqlalchemy import select

from incentive.db import Database
from incentive.ledger.models import Account, Transfer

BIGINT_MAX = 2**63 - 1
BIGINT_MIN = -(2**63)


async def reconciled_balances(db: Database) -> tuple[int, dict[int, int]]:
    """Transfer count and every account's balance, after checking each one reconciles."""
    async with db.unit_of_work() as s:
        balances = {int(i): b for i, b in await s.execute(select(Account.id, Account.balance))}
        moves = (
            await s.execute(
                select(Transfer.debit_account_id, Transfer.credit_account_id, Transfer.amount)
            )
        ).all()
    expected = dict.fromkeys(balances, 0)
    for debit, credit, amount in moves:
        expected[debit] -= amount
        expected[credit] += amount
    for account_id, balance in balances.items():
        assert type(balance) is int, (account_id, balance)
        assert BIGINT_MIN <= balance <= BIGINT_MAX, (account_id, balance)
    assert balances == expected
    return len(moves), balances
