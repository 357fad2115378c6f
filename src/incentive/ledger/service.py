"""The ledger: the only code that changes a balance (tenet 1).

Contract shared by every function here:

- Amounts are positive ``int`` in the asset's minor unit (fen, points); floats are refused.
- Value moves only as a double-entry ``Transfer`` (debit one account, credit another of the
  same asset) carrying a globally unique idempotency key. Repeating a key with the same
  content returns the original transfer and moves nothing; the same key with other content
  raises ``TransferKeyReused`` (409) and writes nothing.
- An account without ``allow_negative`` never goes below zero, and no balance ever leaves
  BIGINT (``BALANCE_MIN`` .. ``BALANCE_MAX``; ``BalanceLimit``, 409): each balance changes
  with one conditional ``UPDATE ... WHERE balance BETWEEN :floor AND :ceiling``, the bounds
  computed in Python with unbounded ints (never read-modify-write, never an overflowing sum).
- Lock order is fixed: first the transfer's idempotency key (unique index, keys in sorted
  order), then account rows in ascending primary key. Two ledger transactions can therefore
  wait for each other but never deadlock.
- A function that raises leaves nothing behind in the caller's transaction, so a caller may
  catch ``InsufficientFunds`` and carry on (e.g. fall back to another reward).
- Nothing here commits; the caller's unit of work does.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy import Select, and_, delete, false, or_, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import one_of, utcnow
from incentive.errors import InvalidField
from incentive.kit.pagination import KeyInt, Keyset, Slice, check_limit
from incentive.ledger import batch_statements, repository
from incentive.ledger.errors import (
    AccountNotFound,
    AssetMismatch,
    BalanceLimit,
    InsufficientFunds,
    TransferKeyReused,
)
from incentive.ledger.metrics import REFUSALS, TRANSFERS
from incentive.ledger.models import Account, Transfer
from incentive.ledger.repository import AccountFacts

OWNER_TYPES = ("user", "merchant", "campaign", "partner", "platform")
# One transfer is capped so that sums over a batch stay far inside a signed 64-bit integer.
MAX_AMOUNT = 10**15
# Net change of one account within one batch; balance + delta must stay inside BIGINT.
MAX_BATCH_DELTA = 2**62
MAX_KEY_LENGTH = 255
MAX_REFERENCE_LENGTH = 200

ASSET_RE = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


# --------------------------------------------------------------------------- accounts


async def open_account(
    session: AsyncSession,
    *,
    owner_type: str,
    owner_id: str,
    asset: str,
    name: str = "main",
    allow_negative: bool = False,
) -> Account:
    """Get or create the account ``(owner_type, owner_id, asset, name)``.

    Race-safe: two concurrent callers get the same row (insert ... on conflict do nothing,
    then read). ``allow_negative`` only applies when the account is created; an existing
    account keeps its setting (it is never changed here, so a funding account stays one).
    """
    _check_owner(owner_type, owner_id)
    _check_asset(asset)
    if not NAME_RE.match(name):
        raise InvalidField("name", "pattern", "name: lowercase letters, digits, _ . - (<= 64)")
    values = {
        "owner_type": owner_type,
        "owner_id": owner_id,
        "asset": asset,
        "name": name,
        "balance": 0,
        "allow_negative": allow_negative,
        "created_at": utcnow(),
    }
    return await repository.insert_account(session, values)


async def open_accounts(
    session: AsyncSession, *, owner_type: str, owner_ids: Iterable[str], asset: str
) -> dict[str, int]:
    """Get or create the ``main`` account of ``asset`` for many owners; owner id -> account id.

    Set-based (one insert ... on conflict do nothing and one read per 5,000 owners), race-safe
    like ``open_account``; owners are inserted in sorted order so two concurrent callers
    sharing owners wait for each other in one order and never deadlock. New accounts never go
    negative.
    """
    _check_owner(owner_type, "x")
    _check_asset(asset)
    wanted = sorted(set(owner_ids))
    for owner_id in wanted:
        if not 1 <= len(owner_id) <= 64:
            raise InvalidField("owner_id", "length", "owner_id: 1 to 64 characters")
    found: dict[str, int] = {}
    now = utcnow()
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start : start + 5000]
        found.update(await repository.open_main_accounts(session, owner_type, chunk, asset, now))
    return found


async def get_account(session: AsyncSession, account_id: int) -> Account:
    """The account with its current balance (re-read, never a stale identity-map copy)."""
    account = (
        await session.execute(
            select(Account)
            .where(Account.id == account_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if account is None:
        raise AccountNotFound(f"account {account_id} does not exist", account_id=account_id)
    return account


async def find_account(
    session: AsyncSession, *, owner_type: str, owner_id: str, asset: str, name: str = "main"
) -> Account | None:
    """The account if it exists; unlike ``open_account`` this never creates one."""
    return await repository.account_by_owner(session, owner_type, owner_id, asset, name)


ACCOUNT_ORDER = Keyset((Account.id,), tuple[KeyInt], descending=False)


def _accounts_of(owners: Iterable[tuple[str, str]]) -> Select[Any]:
    owned = (and_(Account.owner_type == t, Account.owner_id == o) for t, o in owners)
    return select(Account).where(or_(false(), *owned)).execution_options(populate_existing=True)


async def account_page(
    session: AsyncSession, owners: Iterable[tuple[str, str]], cursor: str | None, limit: int
) -> Slice[Account]:
    """The accounts of the given ``(owner_type, owner_id)`` pairs, by id, one page."""
    stmt = _accounts_of(owners)
    return await ACCOUNT_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def accounts_of(session: AsyncSession, owners: Iterable[tuple[str, str]]) -> list[Account]:
    """Every account of the given ``(owner_type, owner_id)`` pairs, by id."""
    return list((await session.execute(_accounts_of(owners).order_by(Account.id))).scalars())


# --------------------------------------------------------------------------- transfers


@dataclass(frozen=True)
class TransferItem:
    """One transfer of a batch (same meaning as the arguments of ``transfer``)."""

    idempotency_key: str
    debit_account_id: int
    credit_account_id: int
    amount: int
    kind: str
    reference: str = ""
    metadata: Mapping[str, Any] | None = None


@dataclass
class BatchResult:
    """``created`` transfers were written now; ``skipped_keys`` had been applied before."""

    created: int
    skipped_keys: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.created + len(self.skipped_keys)


async def transfer(
    session: AsyncSession,
    *,
    idempotency_key: str,
    debit_account_id: int,
    credit_account_id: int,
    amount: int,
    kind: str,
    reference: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> Transfer:
    """Move ``amount`` from the debit to the credit account, exactly once per key.

    - Same key and same content as an earlier transfer: returns that transfer, moves nothing.
    - Same key, other content: ``TransferKeyReused`` (409), nothing written.
    - Debit account not ``allow_negative`` and balance < amount: ``InsufficientFunds``
      (409), no balance changed and no transfer row left.
    - Either balance would leave BIGINT: ``BalanceLimit`` (409), likewise nothing left.
    - Unknown account: ``AccountNotFound`` (404); different assets: ``AssetMismatch`` (409).

    A concurrent call with the same key waits for the first one's transaction (unique index)
    and then returns its transfer. Balance updates take the account rows in id order (on
    PostgreSQL in two statements, ``repository.claim_and_move``).
    """
    item = TransferItem(
        idempotency_key, debit_account_id, credit_account_id, amount, kind, reference, metadata
    )
    meta = _check_item(item, "")
    now = utcnow()
    written = await repository.write_transfer(session, item, meta, now)
    if written is None:
        return await _replay_or_explain(session, item, meta)
    transfer_id, asset, refused = written
    if refused is not None:
        # No balance changed: removing our own uncommitted row leaves no trace.
        await session.execute(delete(Transfer).where(Transfer.id == transfer_id))
        facts = (await _load_accounts(session, {refused}))[refused]
        short = [] if refused == credit_account_id or facts.allow_negative else [refused]
        _refuse(f"moving {amount} {asset}", [refused], short, account_id=refused, amount=amount)
    TRANSFERS.labels(asset, "single").inc()
    return Transfer(
        id=transfer_id,
        idempotency_key=idempotency_key,
        debit_account_id=debit_account_id,
        credit_account_id=credit_account_id,
        amount=amount,
        asset=asset,
        kind=kind,
        reference=reference,
        meta=meta,
        created_at=now,
    )


async def _replay_or_explain(
    session: AsyncSession, item: TransferItem, meta: dict[str, Any]
) -> Transfer:
    existing = (
        await session.execute(
            select(Transfer).where(Transfer.idempotency_key == item.idempotency_key)
        )
    ).scalar_one_or_none()
    if existing is not None:
        if _same_content(existing, item, meta):
            return existing
        raise TransferKeyReused(
            f"idempotency key {item.idempotency_key!r} was used for a different transfer",
            transfer_id=existing.id,
        )
    accounts = await _load_accounts(session, {item.debit_account_id, item.credit_account_id})
    debit, credit = accounts[item.debit_account_id], accounts[item.credit_account_id]
    raise AssetMismatch(
        f"account {debit.id} holds {debit.asset}, account {credit.id} holds {credit.asset}"
    )


async def batch_transfer(session: AsyncSession, items: Sequence[TransferItem]) -> BatchResult:
    """Apply many transfers all or nothing.

    - Each item follows ``transfer``'s idempotency rule: an item whose key already exists with
      the same content is skipped and reported in ``skipped_keys``; a key with other content
      raises ``TransferKeyReused`` and nothing of the batch is written.
    - Keys must be unique within the batch (``InvalidField``).
    - The batch is checked on its net effect: every account without ``allow_negative`` must end
      at or above zero, else ``InsufficientFunds``; every balance must end within BIGINT, else
      ``BalanceLimit``; either way nothing is written.
    - PostgreSQL: set-based, a fixed number of statements whatever the batch size (new rows
      by ``COPY``; see ``batch_statements``). SQLite: executemany.
    """
    if not items:
        return BatchResult(created=0)
    metas: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        metas.append(_check_item(item, f"items[{i}]."))
        if item.idempotency_key in seen:
            raise InvalidField(
                f"items[{i}].idempotency_key", "unique", "idempotency keys repeat in the batch"
            )
        seen.add(item.idempotency_key)
    account_ids = {i.debit_account_id for i in items} | {i.credit_account_id for i in items}
    accounts = await _load_accounts(session, account_ids)
    for i, item in enumerate(items):
        debit, credit = accounts[item.debit_account_id], accounts[item.credit_account_id]
        if debit.asset != credit.asset:
            raise AssetMismatch(
                f"items[{i}]: account {debit.id} holds {debit.asset}, "
                f"account {credit.id} holds {credit.asset}",
                item=i,
            )
    # Sorted keys: concurrent batches sharing keys claim them in one order (no deadlock).
    order = sorted(range(len(items)), key=lambda i: items[i].idempotency_key)
    ordered = [items[i] for i in order]
    ordered_metas = [metas[i] for i in order]
    assets = [accounts[i.debit_account_id].asset for i in ordered]
    async with session.begin_nested():
        skipped = await batch_statements.insert_transfers(
            session, ordered, ordered_metas, assets, utcnow()
        )
        if skipped:
            await _check_replayed(session, ordered, ordered_metas, skipped)
        skipped_set = set(skipped)
        applied = [i for i in ordered if i.idempotency_key not in skipped_set]
        deltas = aggregate_deltas(applied)
        for account_id, delta in deltas.items():
            if abs(delta) > MAX_BATCH_DELTA:
                raise InvalidField("items", "net-change-limit", f"account {account_id} net change")
        if deltas:
            refused_ids = await batch_statements.apply_deltas(session, deltas)
            if refused_ids:
                short = [i for i in refused_ids if deltas[i] < 0 and not accounts[i].allow_negative]
                _refuse("the batch", refused_ids, short)
    for asset, count in collections.Counter(
        accounts[i.debit_account_id].asset for i in applied
    ).items():
        TRANSFERS.labels(asset, "batch").inc(count)
    return BatchResult(created=len(applied), skipped_keys=sorted(skipped))


def _refuse(what: str, refused: list[int], short: list[int], **extra: Any) -> NoReturn:
    """Raise for balance changes the guarded UPDATEs refused (nothing was written): the
    ``short`` non-negative accounts' shortfall first, else the balance limit (BIGINT)."""
    ids, error = (short, InsufficientFunds) if short else (refused, BalanceLimit)
    REFUSALS.labels(error.slug.replace("-", "_")).inc()
    why = "below zero" if short else "past BIGINT"
    extra = extra or {"account_ids": ids[:100]}
    raise error(f"{what} would take account(s) {ids[:20]} {why}; nothing was written", **extra)


def aggregate_deltas(items: Iterable[TransferItem]) -> dict[int, int]:
    """Net balance change per account: credits minus debits. Accounts netting to 0 stay.

    The deltas of any set of transfers sum to zero (double entry).
    """
    deltas: dict[int, int] = {}
    for item in items:
        deltas[item.debit_account_id] = deltas.get(item.debit_account_id, 0) - item.amount
        deltas[item.credit_account_id] = deltas.get(item.credit_account_id, 0) + item.amount
    return deltas


async def _check_replayed(
    session: AsyncSession,
    items: list[TransferItem],
    metas: list[dict[str, Any]],
    skipped: list[str],
) -> None:
    by_key = {i.idempotency_key: (i, m) for i, m in zip(items, metas, strict=True)}
    for start in range(0, len(skipped), 500):
        chunk = skipped[start : start + 500]
        rows = await session.execute(
            select(Transfer).where(one_of(session, Transfer.idempotency_key, chunk))
        )
        for existing in rows.scalars():
            item, meta = by_key[existing.idempotency_key]
            if not _same_content(existing, item, meta):
                raise TransferKeyReused(
                    f"idempotency key {item.idempotency_key!r} was used for a different "
                    "transfer; nothing of the batch was written",
                    transfer_id=existing.id,
                )


# --------------------------------------------------------------------------- history


HISTORY_ORDER = Keyset((Transfer.id,), tuple[KeyInt])


async def history(
    session: AsyncSession, account_id: int, cursor: str | None = None, limit: int = 50
) -> Slice[Transfer]:
    """Transfers touching the account, newest first; pass ``next_cursor`` to continue."""
    await get_account(session, account_id)
    return await history_of_accounts(session, [account_id], cursor, limit)


async def history_of_accounts(
    session: AsyncSession, account_ids: Sequence[int], cursor: str | None = None, limit: int = 50
) -> Slice[Transfer]:
    """Transfers touching any of the accounts, newest first, each once."""
    check_limit(limit)
    after = HISTORY_ORDER.after(cursor) if cursor else None
    if not account_ids:
        return Slice([], None)

    def side(column: Any) -> Select[Any]:
        q = select(Transfer.id).where(column.in_(list(account_ids)))
        if after is not None:
            q = q.where(after)
        # Each side walks its (account, id) index backwards and stops after `limit` rows.
        return q.order_by(Transfer.id.desc()).limit(limit + 1)

    ids_q = union(
        side(Transfer.debit_account_id).subquery().select(),
        side(Transfer.credit_account_id).subquery().select(),
    ).subquery()
    page_ids = select(ids_q.c.id).order_by(ids_q.c.id.desc()).limit(limit + 1)
    rows = await session.execute(
        select(Transfer).where(Transfer.id.in_(page_ids)).order_by(Transfer.id.desc())
    )
    return HISTORY_ORDER.cut(list(rows.scalars()), limit)


# --------------------------------------------------------------------------- internals


async def _load_accounts(session: AsyncSession, ids: set[int]) -> dict[int, AccountFacts]:
    found = await repository.account_facts(session, ids)
    missing = sorted(i for i in ids if i not in found)
    if missing:
        raise AccountNotFound(f"account(s) {missing[:20]} do not exist", account_ids=missing[:100])
    return found


def _check_owner(owner_type: str, owner_id: str) -> None:
    if owner_type not in OWNER_TYPES:
        raise InvalidField("owner_type", "enum", f"owner_type: one of {list(OWNER_TYPES)}")
    if not 1 <= len(owner_id) <= 64:
        raise InvalidField("owner_id", "length", "owner_id: 1 to 64 characters")


def _check_asset(asset: str) -> None:
    if not ASSET_RE.match(asset):
        raise InvalidField("asset", "pattern", "asset: upper-case code such as POINTS or CNY")


def _check_item(item: TransferItem, prefix: str) -> dict[str, Any]:
    """Validate one transfer's arguments; returns its metadata as canonical JSON data."""
    if (
        not 1 <= len(item.idempotency_key) <= MAX_KEY_LENGTH
        or not item.idempotency_key.isprintable()
    ):
        raise InvalidField(
            prefix + "idempotency_key", "length", f"1 to {MAX_KEY_LENGTH} printable characters"
        )
    for name in ("debit_account_id", "credit_account_id"):
        value = getattr(item, name)
        if type(value) is not int or value <= 0:
            raise InvalidField(prefix + name, "positive-integer", "a positive integer id")
    if type(item.amount) is not int:  # bool and float are refused: money is int only
        raise InvalidField(prefix + "amount", "integer", "amount is an integer in minor units")
    if not 0 < item.amount <= MAX_AMOUNT:
        raise InvalidField(prefix + "amount", "range", f"amount: 1 to {MAX_AMOUNT}")
    if item.debit_account_id == item.credit_account_id:
        raise InvalidField(
            prefix + "credit_account_id", "distinct", "debit and credit accounts must differ"
        )
    if not KIND_RE.match(item.kind):
        raise InvalidField(prefix + "kind", "pattern", "kind: lowercase word such as rebate")
    if len(item.reference) > MAX_REFERENCE_LENGTH:
        raise InvalidField(prefix + "reference", "length", f"at most {MAX_REFERENCE_LENGTH}")
    if not item.metadata:
        return {}
    try:
        meta: dict[str, Any] = json.loads(json.dumps(dict(item.metadata)))
    except (TypeError, ValueError) as exc:
        raise InvalidField(prefix + "metadata", "json", "metadata must be JSON data") from exc
    return meta


def _same_content(existing: Transfer, item: TransferItem, meta: dict[str, Any]) -> bool:
    return (
        existing.debit_account_id == item.debit_account_id
        and existing.credit_account_id == item.credit_account_id
        and existing.amount == item.amount
        and existing.kind == item.kind
        and existing.reference == item.reference
        and (existing.meta or {}) == meta
    )


__all__ = [
    "MAX_AMOUNT",
    "OWNER_TYPES",
    "BatchResult",
    "TransferItem",
    "account_page",
    "accounts_of",
    "aggregate_deltas",
    "batch_transfer",
    "find_account",
    "get_account",
    "history",
    "history_of_accounts",
    "open_account",
    "open_accounts",
    "transfer",
]
