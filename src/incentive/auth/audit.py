"""The audit log: who did what, appended in the transaction of the change it describes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.models import AuditEntry
from incentive.db import utcnow
from incentive.kit.idempotency import Caller, Claim
from incentive.observability import request_id_var


async def record_audit(
    session: AsyncSession,
    actor: Caller | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEntry:
    """Append one audit entry in the caller's transaction (so it commits with the change).

    ``actor`` None means the system itself or a local operator at the command line.
    ``request_id`` defaults to the id of the HTTP request being served, if any.
    """
    entry = AuditEntry(
        at=utcnow(),
        actor_id=actor.id if actor else None,
        actor_role=actor.role if actor else "system",
        action=action,
        target=target,
        request_id=request_id if request_id is not None else request_id_var.get(),
        detail=detail or {},
    )
    session.add(entry)
    await session.flush()
    return entry


# Every value-moving call appends one: a Core INSERT built once, no ORM unit of work.
_APPEND = insert(AuditEntry).values(
    at=bindparam("at"),
    actor_id=bindparam("actor_id"),
    actor_role=bindparam("actor_role"),
    action=bindparam("action"),
    target=bindparam("target"),
    request_id=bindparam("request_id"),
    detail=bindparam("detail"),
)


async def record_idempotent_call(claim: Claim, status_code: int) -> None:
    """Audit one completed value-moving call (``kit.idempotency``'s ``on_complete`` hook): the
    caller, ``METHOD /path``, the ``Idempotency-Key`` and the status, in the transaction of the
    work. A replay never completes a claim and a failed call rolls back with its entry, so
    every call that moved value is audited exactly once."""
    actor = claim.actor
    await (await claim.session.connection()).execute(
        _APPEND,
        {
            "at": utcnow(),
            "actor_id": actor.id if actor else None,
            "actor_role": actor.role if actor else "system",
            "action": claim.action,
            "target": claim.action.partition(" ")[2],
            "request_id": request_id_var.get(),
            "detail": {"idempotency_key": claim.key, "status": status_code},
        },
    )
