"""Ledger service contract on the deployment's engine (SQLite or PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from incentive.db import Database
from incentive.errors import InvalidField
from incentive.ledger import service as ledger
from incentive.ledger.errors import (
    AccountNotFound,
    AssetMismatch,
    InsufficientFunds,
    LedgerError,
    TransferKeyReused,
)
from incentive.ledger.models import Account, Transfer


async def _funded(db: Database, *balances: int, asset: str = "POINTS") -> list[int]:
    """An issuer account (allow_negative) first, then one user account per balance."""
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset=asset, allow_negative=True
        )
        ids = [issuer.id]
        for n, balance in enumerate(balances):
            acc = await ledger.open_account(s, owner_type="user", owner_id=f"u{n}", asset=asset)
            ids.append(acc.id)
            if balance:
                await ledger.transfer(
                    s,
                    idempotency_key=f"fund-{asset}-{n}",
                    debit_account_id=issuer.id,
                    credit_account_id=acc.id,
                    amount=balance,
                    kind="funding",
                )
    return ids


async def _balances(db: Database, *ids: int) -> list[int]:
    async with db.unit_of_work() as s:
        return [(await ledger.get_account(s, i)).balance for i in ids]


async def _transfer_count(db: Database) -> int:
    async with db.unit_of_work() as s:
        return int((await s.execute(select(func.count()).select_from(Transfer))).scalar_one())


async def test_open_account_is_get_or_create(db: Database) -> None:
    async with db.unit_of_work() as s:
        a = await ledger.open_account(s, owner_type="user", owner_id="u1", asset="POINTS")
        b = await ledger.open_account(s, owner_type="user", owner_id="u1", asset="POINTS")
        c = await ledger.open_account(s, owner_type="user", owner_id="u1", asset="CNY")
        d = await ledger.open_account(
            s, owner_type="user", owner_id="u1", asset="POINTS", name="frozen"
        )
    assert a.id == b.id
    assert len({a.id, c.id, d.id}) == 3
    assert a.balance == 0
    assert a.allow_negative is False
    assert a.created_at.tzinfo is not None


async def test_open_account_validates_arguments(db: Database) -> None:
    async with db.unit_of_work() as s:
        with pytest.raises(InvalidField) as exc:
            await ledger.open_account(s, owner_type="alien", owner_id="x", asset="POINTS")
        assert exc.value.field == "owner_type"
        with pytest.raises(InvalidField):
            await ledger.open_account(s, owner_type="user", owner_id="x", asset="points")


async def test_transfer_moves_value_both_sides(db: Database) -> None:
    issuer, a, b = await _funded(db, 100, 0)
    async with db.unit_of_work() as s:
        t = await ledger.transfer(
            s,
            idempotency_key="t1",
            debit_account_id=a,
            credit_account_id=b,
            amount=40,
            kind="gift",
            reference="order-9",
            metadata={"note": "hi"},
        )
    assert (t.amount, t.asset, t.kind, t.reference, t.meta) == (
        40,
        "POINTS",
        "gift",
        "order-9",
        {"note": "hi"},
    )
    assert await _balances(db, issuer, a, b) == [-100, 60, 40]


async def test_transfer_to_lower_id_account_works(db: Database) -> None:
    # credit id < debit id exercises the locking path that takes the credit row first
    issuer, a, b = await _funded(db, 0, 50)
    async with db.unit_of_work() as s:
        await ledger.transfer(
            s, idempotency_key="down", debit_account_id=b, credit_account_id=a, amount=50, kind="x"
        )
    assert await _balances(db, a, b) == [50, 0]


async def test_insufficient_funds_changes_nothing(db: Database) -> None:
    issuer, a, b = await _funded(db, 30, 5)
    before = await _transfer_count(db)
    async with db.unit_of_work() as s:
        with pytest.raises(InsufficientFunds) as exc:
            await ledger.transfer(
                s,
                idempotency_key="big",
                debit_account_id=a,
                credit_account_id=b,
                amount=31,
                kind="gift",
            )
        assert isinstance(exc.value, LedgerError)
        assert exc.value.status == 409
        # The caller's transaction is still usable after the refusal (reward fallback).
        await ledger.transfer(
            s,
            idempotency_key="small",
            debit_account_id=a,
            credit_account_id=b,
            amount=30,
            kind="gift",
        )
    assert await _balances(db, a, b) == [0, 35]
    assert await _transfer_count(db) == before + 1
    async with db.unit_of_work() as s:
        assert (
            await s.execute(select(Transfer).where(Transfer.idempotency_key == "big"))
        ).scalar_one_or_none() is None


async def test_insufficient_funds_releases_key(db: Database) -> None:
    issuer, a, b = await _funded(db, 10, 0)
    async with db.unit_of_work() as s:
        with pytest.raises(InsufficientFunds):
            await ledger.transfer(
                s,
                idempotency_key="retry",
                debit_account_id=a,
                credit_account_id=b,
                amount=20,
                kind="gift",
            )
    async with db.unit_of_work() as s:
        await ledger.transfer(
            s,
            idempotency_key="top-up",
            debit_account_id=issuer,
            credit_account_id=a,
            amount=10,
            kind="funding",
        )
        await ledger.transfer(
            s,
            idempotency_key="retry",
            debit_account_id=a,
            credit_account_id=b,
            amount=20,
            kind="gift",
        )
    assert await _balances(db, a, b) == [0, 20]


async def test_funding_account_may_go_negative(db: Database) -> None:
    issuer, a = await _funded(db, 0)
    async with db.unit_of_work() as s:
        await ledger.transfer(
            s,
            idempotency_key="mint",
            debit_account_id=issuer,
            credit_account_id=a,
            amount=10**12,
            kind="funding",
        )
    assert await _balances(db, issuer, a) == [-(10**12), 10**12]


async def test_idempotent_replay_returns_original_and_moves_once(db: Database) -> None:
    issuer, a, b = await _funded(db, 100, 0)
    kwargs = dict(
        idempotency_key="once",
        debit_account_id=a,
        credit_account_id=b,
        amount=25,
        kind="gift",
        reference="r",
        metadata={"k": [1, 2]},
    )
    async with db.unit_of_work() as s:
        first = await ledger.transfer(s, **kwargs)  # type: ignore[arg-type]
    async with db.unit_of_work() as s:
        again = await ledger.transfer(s, **kwargs)  # type: ignore[arg-type]
    assert again.id == first.id
    assert again.created_at == first.created_at
    assert await _balances(db, a, b) == [75, 25]


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 26},
        {"credit_account_id": 1},
        {"kind": "other"},
        {"reference": "x"},
        {"metadata": {"k": 2}},
    ],
)
async def test_key_reuse_with_other_content_is_refused(
    db: Database, change: dict[str, object]
) -> None:
    issuer, a, b = await _funded(db, 100, 0)
    kwargs: dict[str, object] = dict(
        idempotency_key="k",
        debit_account_id=a,
        credit_account_id=b,
        amount=25,
        kind="gift",
        reference="",
        metadata={"k": 1},
    )
    async with db.unit_of_work() as s:
        await ledger.transfer(s, **kwargs)  # type: ignore[arg-type]
    before = await _transfer_count(db)
    kwargs.update(change)
    async with db.unit_of_work() as s:
        with pytest.raises(TransferKeyReused) as exc:
            await ledger.transfer(s, **kwargs)  # type: ignore[arg-type]
    assert exc.value.status == 409
    assert exc.value.slug == "idempotency-key-reused"
    assert await _balances(db, issuer, a, b) == [-100, 75, 25]
    assert await _transfer_count(db) == before


async def test_asset_mismatch_and_unknown_account(db: Database) -> None:
    _, points = await _funded(db, 10)
    _, fen = await _funded(db, 10, asset="CNY")
    async with db.unit_of_work() as s:
        with pytest.raises(AssetMismatch):
            await ledger.transfer(
                s,
                idempotency_key="m",
                debit_account_id=points,
                credit_account_id=fen,
                amount=1,
                kind="x",
            )
        with pytest.raises(AccountNotFound):
            await ledger.transfer(
                s,
                idempotency_key="n",
                debit_account_id=points,
                credit_account_id=999_999,
                amount=1,
                kind="x",
            )
    assert await _balances(db, points, fen) == [10, 10]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 0),
        ("amount", -5),
        ("amount", 1.5),
        ("amount", True),
        ("amount", ledger.MAX_AMOUNT + 1),
        ("credit_account_id", None),
        ("idempotency_key", ""),
        ("kind", "Bad Kind"),
    ],
)
async def test_transfer_rejects_bad_arguments(db: Database, field: str, value: object) -> None:
    _, a, b = await _funded(db, 10, 0)
    kwargs: dict[str, object] = dict(
        idempotency_key="bad", debit_account_id=a, credit_account_id=b, amount=1, kind="gift"
    )
    kwargs[field] = a if value is None else value  # None: same account on both sides
    async with db.unit_of_work() as s:
        with pytest.raises(InvalidField) as exc:
            await ledger.transfer(s, **kwargs)  # type: ignore[arg-type]
    assert exc.value.field == field
    assert await _balances(db, a, b) == [10, 0]


async def test_batch_applies_all(db: Database) -> None:
    issuer, a, b, c = await _funded(db, 0, 0, 0)
    items = [
        ledger.TransferItem(f"b{i}", issuer, [a, b, c][i % 3], i + 1, "grant") for i in range(30)
    ] + [ledger.TransferItem("b-move", a, c, 5, "move", "ref", {"why": "test"})]
    async with db.unit_of_work() as s:
        result = await ledger.batch_transfer(s, items)
    assert result.created == 31
    assert result.skipped_keys == []
    expected = ledger.aggregate_deltas(items)
    assert await _balances(db, issuer, a, b, c) == [expected[i] for i in (issuer, a, b, c)]
    async with db.unit_of_work() as s:
        moved = (
            await s.execute(select(Transfer).where(Transfer.idempotency_key == "b-move"))
        ).scalar_one()
    assert (moved.reference, moved.meta, moved.asset) == ("ref", {"why": "test"}, "POINTS")


async def test_batch_is_all_or_nothing(db: Database) -> None:
    issuer, a, b = await _funded(db, 10, 0)
    before = await _transfer_count(db)
    items = [
        ledger.TransferItem("ok-1", issuer, b, 100, "grant"),
        ledger.TransferItem("too-much", a, b, 11, "move"),
    ]
    async with db.unit_of_work() as s:
        with pytest.raises(InsufficientFunds) as exc:
            await ledger.batch_transfer(s, items)
        assert exc.value.extra["account_ids"] == [a]
    assert await _balances(db, issuer, a, b) == [-10, 10, 0]
    assert await _transfer_count(db) == before


async def test_batch_checks_net_effect(db: Database) -> None:
    # a pays 15 while holding 10, but receives 5 in the same batch: net 0, allowed.
    issuer, a, b = await _funded(db, 10, 0)
    items = [
        ledger.TransferItem("pay", a, b, 15, "move"),
        ledger.TransferItem("refill", issuer, a, 5, "grant"),
    ]
    async with db.unit_of_work() as s:
        await ledger.batch_transfer(s, items)
    assert await _balances(db, a, b) == [0, 15]


async def test_batch_skips_applied_items_and_refuses_changed_ones(db: Database) -> None:
    issuer, a, b = await _funded(db, 100, 0)
    first = [ledger.TransferItem(f"k{i}", a, b, 10, "move") for i in range(3)]
    async with db.unit_of_work() as s:
        assert (await ledger.batch_transfer(s, first)).created == 3
    retry = [*first, ledger.TransferItem("k3", a, b, 10, "move")]
    async with db.unit_of_work() as s:
        result = await ledger.batch_transfer(s, retry)
    assert result.created == 1
    assert result.skipped_keys == ["k0", "k1", "k2"]
    assert await _balances(db, a, b) == [60, 40]
    before = await _transfer_count(db)
    changed = [
        ledger.TransferItem("k4", a, b, 10, "move"),
        ledger.TransferItem("k0", a, b, 11, "move"),
    ]
    async with db.unit_of_work() as s:
        with pytest.raises(TransferKeyReused):
            await ledger.batch_transfer(s, changed)
    assert await _balances(db, a, b) == [60, 40]
    assert await _transfer_count(db) == before


async def test_batch_validates_items(db: Database) -> None:
    issuer, a, b = await _funded(db, 100, 0)
    async with db.unit_of_work() as s:
        with pytest.raises(InvalidField) as exc:
            await ledger.batch_transfer(
                s,
                [ledger.TransferItem("d", a, b, 1, "x"), ledger.TransferItem("d", a, b, 1, "x")],
            )
        assert exc.value.field == "items[1].idempotency_key"
        with pytest.raises(InvalidField) as exc:
            await ledger.batch_transfer(s, [ledger.TransferItem("z", a, b, 0, "x")])
        assert exc.value.field == "items[0].amount"
        with pytest.raises(AccountNotFound):
            await ledger.batch_transfer(s, [ledger.TransferItem("z", a, 10**9, 1, "x")])
    assert await _transfer_count(db) == 1
    async with db.unit_of_work() as s:
        assert (await ledger.batch_transfer(s, [])).created == 0


async def test_history_is_newest_first_with_cursor(db: Database) -> None:
    issuer, a, b = await _funded(db, 0, 0)
    async with db.unit_of_work() as s:
        for i in range(7):
            await ledger.transfer(
                s,
                idempotency_key=f"h{i}",
                debit_account_id=issuer,
                credit_account_id=a,
                amount=10,
                kind="grant",
            )
        for i in range(3):
            await ledger.transfer(
                s,
                idempotency_key=f"o{i}",
                debit_account_id=a,
                credit_account_id=b,
                amount=1,
                kind="move",
            )
            await ledger.transfer(
                s,
                idempotency_key=f"x{i}",
                debit_account_id=issuer,
                credit_account_id=b,
                amount=1,
                kind="grant",
            )
    seen: list[int] = []
    cursor: int | None = None
    async with db.unit_of_work() as s:
        while True:
            page = await ledger.history(s, a, cursor, 4)
            seen.extend(t.id for t in page.items)
            assert all(a in (t.debit_account_id, t.credit_account_id) for t in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        all_ids = (
            (
                await s.execute(
                    select(Transfer.id)
                    .where((Transfer.debit_account_id == a) | (Transfer.credit_account_id == a))
                    .order_by(Transfer.id.desc())
                )
            )
            .scalars()
            .all()
        )
        # Transfers between two listed accounts appear once.
        both = await ledger.history_of_accounts(s, [a, b], None, 100)
        assert len(both.items) == len({t.id for t in both.items}) == 13
        with pytest.raises(AccountNotFound):
            await ledger.history(s, 10**9)
        with pytest.raises(InvalidField):
            await ledger.history(s, a, None, 0)
    assert seen == list(all_ids)
    assert len(seen) == 10


async def test_database_refuses_negative_balance_even_outside_the_service(db: Database) -> None:
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    _, a = await _funded(db, 5)
    with pytest.raises(IntegrityError):
        async with db.unit_of_work() as s:
            await s.execute(update(Account).where(Account.id == a).values(balance=-1))
    assert await _balances(db, a) == [5]
