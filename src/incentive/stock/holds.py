"""Tie a stock deduction to the database transaction that records it.

A deduction is made in the stock store before the transaction that records it commits. If
that transaction rolls back, the units (and the user's quota) must go back; if it commits,
they stay taken. ``keep_if_committed`` arranges exactly that for a session. A commit whose
outcome is unknown (the connection broke while committing) gives nothing back: the units stay
stranded, never oversold, until the domain's reconcile returns them.

``give_back_if_committed`` is the mirror: units that the transaction releases (a reward whose
delivery failed for good) go back to the store only once the release is committed.

Savepoints count: a deduction held inside a savepoint that rolls back is given back then;
one held inside a savepoint that is released is held by the transaction around it. Giving
back runs in a task after the transaction ended (the session's events are synchronous);
``settled()`` waits for the tasks started so far (tests, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.stock.engine import Deduction, StockEngine, give_back

log = logging.getLogger(__name__)

_HELD = "stock.held"
_COMMITTING = "stock.committing"
_tasks: set[asyncio.Task[None]] = set()


@dataclass
class _Held:
    engine: StockEngine
    deduction: Deduction
    user: str | None  # whose quota the deduction counted, if any
    keep: bool  # True: keep if committed; False: give back once committed
    scope: Any  # the savepoint (SessionTransaction) it was registered in; None: the outer one


def keep_if_committed(
    session: AsyncSession, engine: StockEngine, deduction: Deduction, user: str | None
) -> None:
    """Give ``deduction`` (and ``user``'s quota for it) back if the transaction — or the
    savepoint it was taken in — rolls back; keep it once the transaction commits."""
    _hold(session, _Held(engine, deduction, user, True, None))


def give_back_if_committed(
    session: AsyncSession, engine: StockEngine, deduction: Deduction, user: str | None
) -> None:
    """Give ``deduction`` (and ``user``'s quota for it) back once the session's transaction
    has committed; nothing if it (or the savepoint this was said in) rolls back."""
    _hold(session, _Held(engine, deduction, user, False, None))


async def compensate(engine: StockEngine, deduction: Deduction, user: str | None) -> None:
    """Give a deduction and the user's quota for it back now."""
    await give_back(engine, deduction)
    if user is not None:
        await engine.release_quota(deduction.pool, user, deduction.quantity)


async def settled() -> None:
    """Wait until every give-back started so far has run."""
    while _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)


def _hold(session: AsyncSession, held: _Held) -> None:
    sync = session.sync_session
    if not sync.info.get("stock.listening"):
        sync.info["stock.listening"] = True
        event.listen(sync, "before_commit", _before_commit)
        event.listen(sync, "after_commit", _after_commit)
        event.listen(sync, "after_soft_rollback", _after_soft_rollback)
    held.scope = sync.get_nested_transaction()
    sync.info.setdefault(_HELD, []).append(held)


def _within(scope: Any, transaction: Any) -> bool:
    """Whether ``scope`` (a savepoint, None for the outer transaction) is ``transaction`` or
    nested inside it."""
    while scope is not None:
        if scope is transaction:
            return True
        scope = scope.parent
    return not transaction.nested


def _before_commit(sync: Any) -> None:
    if not sync.in_nested_transaction():  # a savepoint's release is no commit
        sync.info[_COMMITTING] = True


def _after_commit(sync: Any) -> None:
    released = sync.get_nested_transaction()
    if released is not None:
        # A savepoint released: what was held in it is now held by the one around it.
        for h in sync.info.get(_HELD, []):
            if h.scope is released:
                h.scope = released.parent if released.parent.nested else None
        return
    sync.info.pop(_COMMITTING, None)
    held: list[_Held] = sync.info.pop(_HELD, [])
    _spawn([h for h in held if not h.keep])


def _after_soft_rollback(sync: Any, previous: Any) -> None:
    held: list[_Held] = sync.info.get(_HELD, [])
    undone = [h for h in held if _within(h.scope, previous)]
    if not undone:
        return
    sync.info[_HELD] = [h for h in held if h not in undone]
    committing = not previous.nested and sync.info.pop(_COMMITTING, False)
    kept = [h for h in undone if h.keep]
    if committing and kept:
        # The commit failed midway: it may have landed. Giving back could oversell.
        log.error(
            "stock held by a commit whose outcome is unknown; reconcile returns it",
            extra={"pools": sorted({h.deduction.pool for h in kept})},
        )
        return
    _spawn(kept)


def _spawn(held: list[_Held]) -> None:
    for h in held:
        task = asyncio.get_running_loop().create_task(_give(h))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


async def _give(h: _Held) -> None:
    try:
        await compensate(h.engine, h.deduction, h.user)
    except Exception:
        log.exception(
            "stock not given back; reconcile returns it", extra={"pool": h.deduction.pool}
        )
