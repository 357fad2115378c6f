"""Coupons: batches, claims into the wallet, the task lock, expiry and revocation.

Every state change is one conditional ``UPDATE coupons … WHERE state = :from`` followed by
its ``coupon_transitions`` rows (``move_all``), so two racing changes never both win. Value
reaches a customer only through ``issue`` (the claim route, and later rewards, sharing and
referrals): atomic against the batch's stock and the customer's limit under any
concurrency. A call to a provider is never made here: it is written as a ``ProviderCall``
in the same transaction and sent by workers after the commit (``coupons.calls``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, Table, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns import participation
from incentive.coupons.batches import get_batch
from incentive.coupons.errors import (
    BatchClosed,
    ClaimLimitReached,
    CouponNotFound,
    CouponNotUsable,
    CouponsExhausted,
)
from incentive.coupons.models import (
    Coupon,
    CouponBatch,
    CouponHolding,
    CouponTransition,
    ImportedCode,
    ProviderCall,
)
from incentive.coupons.rules import DEFAULT_VALID_DAYS, CouponTask
from incentive.db import insert as db_insert
from incentive.db import new_id, one_of, per_dialect, utcnow
from incentive.kit.codes import random_codes
from incentive.kit.idempotency import Caller
from incentive.kit.pagination import KeyId, KeyInt, Keyset, KeyTime, Slice

# Tables for plain inserts with parameters: one cached statement, no ORM bulk insert.
_COUPONS = cast(Table, Coupon.__table__)
_TRANSITIONS = cast(Table, CouponTransition.__table__)
_CALLS = cast(Table, ProviderCall.__table__)
_HOLDINGS = cast(Table, CouponHolding.__table__)

LOCKED = "received"
#: published when a provider's coupon fails for good (who gave it may give something else)
FAILED_TOPIC = "coupon.failed"
#: states a coupon leaves only by expiry at the end of its validity
EXPIRING = ("received", "usable", "held")
EXPIRY_PAGE = 1_000


@dataclass(frozen=True)
class Actor:
    """Who changed a coupon: a user (``id``, ``role``), a provider or the system."""

    id: str
    role: str

    @classmethod
    def of(cls, caller: Caller | None) -> Actor:
        return SYSTEM if caller is None else cls(caller.id, caller.role)


SYSTEM = Actor("system", "system")


def request_no(action: str, subject_id: str) -> str:
    """The number a provider call is made under: fixed by what it is about, so a retry, a
    restarted worker or a replayed request asks under the same number."""
    return {"issue": "I", "redeem": "R", "reverse": "U", "revoke": "V"}[action] + subject_id


# --------------------------------------------------------------------------- transitions


async def move_all(
    session: AsyncSession,
    ids: Sequence[str],
    from_state: str,
    to_state: str,
    actor: Actor,
    why: str,
    *,
    only_if: ColumnElement[bool] | None = None,
    **values: Any,
) -> list[str]:
    """Move the coupons among ``ids`` that are in ``from_state`` (and meet ``only_if``) to
    ``to_state`` with one conditional UPDATE, and record a transition for each moved;
    returns the ids moved."""
    if not ids:
        return []
    now = utcnow()
    condition = Coupon.state == from_state
    if only_if is not None:
        condition = and_(condition, only_if)
    moved = list(
        await session.scalars(
            update(Coupon)
            .where(one_of(session, Coupon.id, list(ids)), condition)
            .values(state=to_state, updated_at=now, **values)
            .returning(Coupon.id)
            .execution_options(synchronize_session=False)
        )
    )
    await _record(session, moved, from_state, to_state, actor, why, now)
    return moved


async def move(
    session: AsyncSession,
    coupon_id: str,
    from_state: str,
    to_state: str,
    actor: Actor,
    why: str,
    *,
    only_if: ColumnElement[bool] | None = None,
    **values: Any,
) -> bool:
    """Move one coupon from ``from_state`` (only from it) and record why; whether it moved."""
    moved = await move_all(
        session, [coupon_id], from_state, to_state, actor, why, only_if=only_if, **values
    )
    return bool(moved)


async def _record(
    session: AsyncSession,
    ids: Iterable[str],
    from_state: str | None,
    to_state: str,
    actor: Actor,
    why: str,
    at: datetime,
) -> None:
    rows = [
        {
            "coupon_id": i,
            "from_state": from_state,
            "to_state": to_state,
            "actor": actor.id,
            "actor_role": actor.role,
            "reason": why[:200],
            "at": at,
        }
        for i in ids
    ]
    if rows:
        await session.execute(_TRANSITIONS.insert(), rows)


TRANSITION_ORDER = Keyset((CouponTransition.id,), tuple[KeyInt], descending=False)


async def transitions(
    session: AsyncSession, coupon_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[CouponTransition]:
    """A coupon's state changes, oldest first."""
    stmt = select(CouponTransition).where(CouponTransition.coupon_id == coupon_id)
    return await TRANSITION_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


# --------------------------------------------------------------------------- claims


_BATCHES = cast(Table, CouponBatch.__table__)
_B = _BATCHES.c
_TAKE_STOCK = (
    _BATCHES.update()
    .where(
        _B.id == bindparam("batch"),
        _B.open.is_(True),
        or_(_B.provider_state.is_(None), _B.provider_state == "running"),
        or_(_B.claims_until.is_(None), _B.claims_until > bindparam("now")),
        # A batch whose coupons are no longer valid gives none: a claim would spend stock on a
        # coupon expired before it reached the wallet.
        or_(_B.valid_until.is_(None), _B.valid_until > bindparam("now")),
        _B.stock >= 1,
    )
    .values(stock=_B.stock - 1, claimed=_B.claimed + 1)
    # The terms a coupon is claimed under (a table statement: no ORM work on the hot path).
    .returning(
        _B.id,
        _B.campaign_id,
        _B.provider_id,
        _B.codes_imported,
        _B.task,
        _B.valid_from,
        _B.valid_until,
        _B.valid_days,
        _B.face_value_fen,
        _B.rate_bp,
        _B.max_discount_fen,
        _B.min_spend_fen,
    )
)


_COUNT_CLAIM: dict[str, Any] = {}  # by dialect: built once, run with parameters


@per_dialect
def _count_claim_statement(dialect: str) -> Any:
    limit = select(_B.per_customer_limit).where(_B.id == bindparam("batch")).scalar_subquery()
    held = _HOLDINGS.c
    return (
        db_insert(dialect, _HOLDINGS)
        .values(batch_id=bindparam("batch"), customer_id=bindparam("customer"), claimed=1)
        .on_conflict_do_update(
            index_elements=["batch_id", "customer_id"],
            set_={"claimed": held.claimed + 1},
            where=held.claimed < limit,
        )
        .returning(held.claimed)
    )


async def _count_claim(session: AsyncSession, batch_id: str, customer_id: str) -> bool:
    """One more claim of ``customer_id`` on the batch, if within its limit (atomic: the
    upsert's condition is checked under the row's lock)."""
    stmt = _count_claim_statement(session)
    return (
        await session.execute(stmt, {"batch": batch_id, "customer": customer_id})
    ).first() is not None


async def _explain_refusal(session: AsyncSession, batch_id: str) -> None:
    batch = await get_batch(session, batch_id)
    if not batch.open or batch.provider_state not in (None, "running"):
        raise BatchClosed(
            f"coupon batch {batch_id} takes no claims now",
            batch_id=batch_id,
            provider_state=batch.provider_state,
        )
    if batch.claims_until is not None and batch.claims_until <= utcnow():
        raise BatchClosed(f"coupon batch {batch_id}'s campaign has ended", batch_id=batch_id)
    if batch.valid_until is not None and batch.valid_until <= utcnow():
        raise BatchClosed(
            f"coupon batch {batch_id}'s coupons were valid until {batch.valid_until.isoformat()}",
            batch_id=batch_id,
        )
    raise CouponsExhausted(f"no coupons left in batch {batch_id}", batch_id=batch_id)


async def issue(
    session: AsyncSession, batch_id: str, customer_id: str, actor: Actor, reason: str = "claim"
) -> Coupon:
    """Put one coupon of the batch into ``customer_id``'s wallet — the one way any domain
    gives a coupon.

    Atomic against the batch's stock and the customer's limit: the customer's count goes up
    only while below the limit and the stock down only while above zero, each by one
    conditional statement, so no concurrency over-claims (409 ``ClaimLimitReached``,
    ``CouponsExhausted``, ``BatchClosed``; 404 ``BatchNotFound``). A batch with a task gives
    a locked (``received``) coupon; otherwise ours is ``usable`` at once and a provider's is
    ``activating``, its issue call written to go out after the commit. Must run in the
    caller's unit of work; an error leaves nothing behind once it rolls back (a caller that
    goes on after a refusal — a reward falling back — wraps it in a savepoint). Returns the
    coupon as written, detached from the session.
    """
    if not await _count_claim(session, batch_id, customer_id):
        await get_batch(session, batch_id)
        raise ClaimLimitReached(
            f"customer already holds the most coupons of batch {batch_id} allowed",
            batch_id=batch_id,
        )
    now = utcnow()
    batch = (
        await session.execute(
            _TAKE_STOCK,
            {"batch": batch_id, "now": now},
            execution_options={"synchronize_session": False},
        )
    ).first()
    if batch is None:
        await _explain_refusal(session, batch_id)
    assert batch is not None
    coupon_id = new_id()
    code = await _code_for(session, batch, coupon_id)
    task = CouponTask.model_validate(batch.task) if batch.task else None
    if task is not None:
        state = LOCKED
    else:
        state = "usable" if batch.provider_id is None else "activating"
    until = batch.valid_until
    if batch.valid_days is not None:
        by_days = now + timedelta(days=batch.valid_days)
        until = by_days if until is None else min(until, by_days)
    row = dict(
        id=coupon_id,
        batch_id=batch.id,
        campaign_id=batch.campaign_id or "",
        customer_id=customer_id,
        code=code,
        state=state,
        claimed_at=now,
        task_due_at=now + timedelta(days=task.within_days) if task else None,
        valid_from=max(now, batch.valid_from) if batch.valid_from else now,
        valid_until=until or now + timedelta(days=DEFAULT_VALID_DAYS),
        face_value_fen=batch.face_value_fen,
        rate_bp=batch.rate_bp,
        max_discount_fen=batch.max_discount_fen,
        min_spend_fen=batch.min_spend_fen,
        provider_id=batch.provider_id,
        request_no=request_no("issue", coupon_id) if batch.provider_id else None,
        updated_at=now,
    )
    await session.execute(_COUPONS.insert(), row)
    coupon = Coupon(**row)  # what was written, as a detached snapshot for the answer
    await _record(session, [coupon_id], None, state, actor, reason, now)
    if state == "activating":
        await queue_call(session, "issue", coupon)
    return coupon


async def claim(session: AsyncSession, batch_id: str, customer: Caller) -> Coupon:
    """A customer's own claim: ``issue``, told to participation's observers (sharing)."""
    coupon = await issue(session, batch_id, customer.id, Actor.of(customer))
    done = ("claim", coupon.id, coupon.campaign_id, customer.id, coupon.claimed_at)
    await participation.notify(session, [participation.Participation(*done)])
    return coupon


async def _code_for(session: AsyncSession, batch: Row[Any], coupon_id: str) -> str:
    """Our code for the coupon: the next imported one, or freshly drawn (49.5 bits)."""
    if not batch.codes_imported:
        return random_codes(1)[0]
    free = (
        select(ImportedCode.code)
        .where(ImportedCode.batch_id == batch.id, ImportedCode.coupon_id.is_(None))
        .order_by(ImportedCode.code)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    code = await session.scalar(
        update(ImportedCode)
        .where(ImportedCode.code == free, ImportedCode.coupon_id.is_(None))
        .values(coupon_id=coupon_id)
        .returning(ImportedCode.code)
        .execution_options(synchronize_session=False)
    )
    if code is None:  # the stock said one was left: another claim took it meanwhile
        raise CouponsExhausted(f"no coupons left in batch {batch.id}", batch_id=batch.id)
    return code


async def queue_call(
    session: AsyncSession, action: str, coupon: Coupon, redemption_id: str | None = None
) -> None:
    """Write the provider call ``action`` about ``coupon`` (or its redemption) to be sent by
    workers once this transaction commits (``coupons.calls``)."""
    assert coupon.provider_id is not None
    now = utcnow()
    await session.execute(
        _CALLS.insert(),
        {
            "provider_id": coupon.provider_id,
            "coupon_id": coupon.id,
            "redemption_id": redemption_id,
            "action": action,
            "request_no": request_no(action, redemption_id or coupon.id),
            "state": "pending",
            "attempts": 0,
            "due_at": now,
            "created_at": now,
        },
    )


# --------------------------------------------------------------------------- wallet


WALLET_ORDER = Keyset((Coupon.claimed_at, Coupon.id), tuple[KeyTime, KeyId], descending=True)


async def wallet(
    session: AsyncSession,
    customer_id: str,
    *,
    states: Sequence[str] | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[Coupon]:
    stmt = select(Coupon).where(Coupon.customer_id == customer_id)
    if states:
        stmt = stmt.where(Coupon.state.in_(list(states)))
    return await WALLET_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def customer_coupon(session: AsyncSession, customer_id: str, coupon_id: str) -> Coupon:
    coupon = await session.get(Coupon, coupon_id)
    if coupon is None or coupon.customer_id != customer_id:
        raise CouponNotFound(f"coupon {coupon_id} does not exist", coupon_id=coupon_id)
    return coupon


async def get_coupon(session: AsyncSession, coupon_id: str) -> Coupon:
    coupon = await session.get(Coupon, coupon_id)
    if coupon is None:
        raise CouponNotFound(f"coupon {coupon_id} does not exist", coupon_id=coupon_id)
    return coupon


# --------------------------------------------------------------------------- expiry, revocation


async def expire_due(session: AsyncSession, *, limit: int = EXPIRY_PAGE) -> int:
    """Expire up to ``limit`` coupons per rule: locked ones whose task window passed (their
    place goes back to the batch's stock: the promise lapsed unused) and unused ones past
    their validity. Returns how many expired."""
    now = utcnow()
    done = 0
    lapsed = list(
        (
            await session.execute(
                select(Coupon.id, Coupon.batch_id)
                .where(Coupon.state == LOCKED, Coupon.task_due_at <= now)
                .order_by(Coupon.task_due_at)
                .limit(limit)
            )
        ).all()
    )
    moved = set(
        await move_all(
            session, [r.id for r in lapsed], LOCKED, "expired", SYSTEM, "task-window-passed"
        )
    )
    back: dict[str, int] = {}
    for row in lapsed:
        if row.id in moved:
            back[row.batch_id] = back.get(row.batch_id, 0) + 1
    for batch_id, n in sorted(back.items()):
        await session.execute(
            update(CouponBatch)
            .where(CouponBatch.id == batch_id)
            .values(stock=CouponBatch.stock + n)
            .execution_options(synchronize_session=False)
        )
    done += len(moved)
    # A hold the till never committed lapses: the coupon is plainly usable again.
    lapsed_holds = list(
        await session.scalars(
            select(Coupon.id)
            .where(Coupon.state == "held", Coupon.held_until <= now, Coupon.valid_until > now)
            .limit(limit)
        )
    )
    await move_all(
        session, lapsed_holds, "held", "usable", SYSTEM, "hold lapsed",
        only_if=Coupon.held_until <= now, held_by=None, held_until=None,
    )  # fmt: skip
    for state in EXPIRING:
        ids = list(
            await session.scalars(
                select(Coupon.id)
                .where(Coupon.state == state, Coupon.valid_until <= now)
                .order_by(Coupon.valid_until)
                .limit(limit)
            )
        )
        done += len(await move_all(session, ids, state, "expired", SYSTEM, "validity-ended"))
    return done


REVOCABLE = ("received", "usable", "held", "failed")


async def revoke(session: AsyncSession, coupon_id: str, by: Caller | None, reason: str) -> Coupon:
    """An operator withdraws a coupon that is not used; a provider's issued coupon is
    revoked at the provider too (a call after the commit). 409 ``CouponNotUsable`` for a
    coupon being activated, used, expired or already revoked."""
    coupon = await get_coupon(session, coupon_id)
    if coupon.state not in REVOCABLE or not await move_all(
        session, [coupon.id], coupon.state, "revoked", Actor.of(by), reason
    ):
        await session.refresh(coupon)
        raise CouponNotUsable(
            f"coupon {coupon_id} is {coupon.state}: it cannot be revoked",
            coupon_id=coupon_id,
            state=coupon.state,
        )
    if coupon.provider_code is not None:
        await queue_call(session, "revoke", coupon)
    await session.refresh(coupon)
    return coupon


def still_valid(coupon: Coupon, now: datetime) -> bool:
    return coupon.valid_from <= now < coupon.valid_until
