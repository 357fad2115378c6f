"""Tie a stock deduction to the database transaction that records it.

A deduction is made in the stock store before the transaction that records it commits. If
that transaction rolls back, the units (and the user's quota) must go back; if it commits,
they stay taken. ``keep_if_committed`` arranges exactly that for a session. A commit whose
outcome is unknown (the connection broke while committing) gives nothing back: the units stay
stranded, never oversold, until the domain's reconcile returns them.

``give_back_if_committed`` is the mirror: units that the transaction releases (a reward whose
delivery failed for good) go back to the store only once the release is committed.

A savepoint (``begin_nested``) decides only for what was held or released inside it: rolled
back, its holds go back at once and its releases are dropped; released, they become its
parent's to decide. (SQLAlchemy fires ``after_commit`` and ``after_rollback`` for a savepoint
too, so the outermost transaction is told apart from its savepoints here.)

Giving back runs in a task after the transaction ended (the session's events are
synchronous); ``settled()`` waits for the tasks started so far (tests, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from incentive.stock.engine import Deduction, StockEngine, give_back

log = logging.getLogger(__name__)

_KEEP = "stock.keep_if_committed"
_RELEASE = "stock.give_back_if_committed"
_COMMITTING = "stock.committing"
_tasks: set[asyncio.Task[None]] = set()


@dataclass
class _Held:
    engine: StockEngine
    deduction: Deduction
    user: str | None  # whose quota the deduction counted, if any
    #: the transaction or savepoint whose end decides (moves to the parent when released)
    within: SessionTransaction | None


def keep_if_committed(
    session: AsyncSession, engine: StockEngine, deduction: Deduction, user: str | None
) -> None:
    """Give ``deduction`` (and ``user``'s quota for it) back if the session's transaction
    rolls back before its commit."""
    _listen(session)
    sync = session.sync_session
    sync.info.setdefault(_KEEP, []).append(_Held(engine, deduction, user, _innermost(sync)))


def forget(session: AsyncSession, deduction: Deduction) -> None:
    """Stop holding ``deduction`` for this session (the caller gave it back itself)."""
    held: list[_Held] = session.sync_session.info.get(_KEEP, [])
    session.sync_session.info[_KEEP] = [h for h in held if h.deduction is not deduction]


def give_back_if_committed(
    session: AsyncSession, engine: StockEngine, deduction: Deduction, user: str | None
) -> None:
    """Give ``deduction`` (and ``user``'s quota for it) back once the session's transaction
    has committed; nothing if it rolls back."""
    _listen(session)
    sync = session.sync_session
    sync.info.setdefault(_RELEASE, []).append(_Held(engine, deduction, user, _innermost(sync)))


async def compensate(engine: StockEngine, deduction: Deduction, user: str | None) -> None:
    """Give a deduction and the user's quota for it back now."""
    await give_back(engine, deduction)
    if user is not None:
        await engine.release_quota(deduction.pool, user, deduction.quantity)


async def settled() -> None:
    """Wait until every give-back started so far has run."""
    while _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)


def _listen(session: AsyncSession) -> None:
    sync = session.sync_session
    if sync.info.get("stock.listening"):
        return
    sync.info["stock.listening"] = True
    event.listen(sync, "before_commit", _before_commit)
    event.listen(sync, "after_commit", _after_commit)
    event.listen(sync, "after_rollback", _after_rollback)


def _innermost(sync: Session) -> SessionTransaction | None:
    """The savepoint or transaction in progress (while its end is being told: the one
    ending)."""
    return sync.get_nested_transaction() or sync.get_transaction()


def _inside(within: SessionTransaction | None, ending: SessionTransaction) -> bool:
    while within is not None:
        if within is ending:
            return True
        within = within.parent
    return False


def _before_commit(sync: Session) -> None:
    if sync.get_nested_transaction() is None:  # a savepoint's release commits nothing yet
        sync.info[_COMMITTING] = True


def _after_commit(sync: Session) -> None:
    ending = _innermost(sync)
    if ending is not None and ending.nested:
        # A savepoint released: what it held or released is now its parent's to decide.
        for key in (_KEEP, _RELEASE):
            for h in sync.info.get(key, []):
                if _inside(h.within, ending):
                    h.within = ending.parent
        return
    sync.info.pop(_COMMITTING, None)
    sync.info.pop(_KEEP, None)
    _spawn(sync.info.pop(_RELEASE, []))


def _after_rollback(sync: Session) -> None:
    ending = _innermost(sync)
    if ending is not None and ending.nested:
        # A savepoint rolled back: only what was held inside it goes back (its grant is
        # undone); what it released stays held; the rest is the outer transaction's.
        kept: list[_Held] = sync.info.get(_KEEP, [])
        sync.info[_KEEP] = [h for h in kept if not _inside(h.within, ending)]
        released: list[_Held] = sync.info.get(_RELEASE, [])
        sync.info[_RELEASE] = [h for h in released if not _inside(h.within, ending)]
        _spawn([h for h in kept if _inside(h.within, ending)])
        return
    committing = sync.info.pop(_COMMITTING, False)
    sync.info.pop(_RELEASE, None)
    held: list[_Held] = sync.info.pop(_KEEP, [])
    if committing and held:
        # The commit failed midway: it may have landed. Giving back could oversell.
        log.error(
            "stock held by a commit whose outcome is unknown; reconcile returns it",
            extra={"pools": sorted({h.deduction.pool for h in held})},
        )
        return
    _spawn(held)


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
