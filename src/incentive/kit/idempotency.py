"""``Idempotency-Key`` for value-moving POSTs: a retried request is answered, never re-run.

Usage in a router (the endpoint keeps its ordinary signature)::

    @router.post("/things", status_code=201, response_model=ThingOut)
    @idempotent(status_code=201)
    async def create_thing(body: ThingIn, session: Session, caller: CurrentUser) -> ThingOut:
        ...

or, for full control, take the claim as a dependency
(``claim: Annotated[Claim, Depends(claim_dependency())]``) and call
``claim.replayed_response()`` / ``await claim.complete(status, body)`` yourself.

This module knows no domain. Who calls, and what completing a call records, are plugged in:

- ``use_default_caller(dependency)``: the FastAPI dependency resolving the caller (any object
  with ``id`` and ``role``, see ``Caller``), used unless a route passes ``principal=``.
- ``on_complete(hook)``: awaited with the claim and the status each time a claim completes,
  in the transaction of the work (the audit entry).

``incentive.auth.principal`` installs both when it is imported (``current_user`` and the
audit entry), which every router using ``@idempotent`` does first. Without them nothing runs
unaudited: building an idempotent route raises ``RuntimeError`` (at import, i.e. start-up),
and so does completing a claim (before anything is stored; the request fails and rolls back).

Rules:

- The header is required; 1-200 printable ASCII characters, else 422 naming the header.
- Keys are scoped by the caller (``role:id``): two callers may use the same key.
- The fingerprint is sha256(method, path with query, body). Same key + same fingerprint
  replays the stored response — its original status code and body — with
  ``Idempotent-Replayed: true`` (``answer()``: the one convention of every value-moving POST,
  also of routes that keep their key elsewhere, such as flash-sale purchases); same key + another
  fingerprint is 409 ``idempotency-key-reused``, and nothing runs.
- The record is claimed (inserted) before the work and completed with the response in the
  same transaction as the work. A failed request (any error) rolls back with its record, so
  the key stays free and a retry runs again; only 2xx responses are stored and replayed.
- Completing a claim also runs the ``on_complete`` hook (auth appends an audit entry: actor,
  method and path, key, status) in the same transaction: every value-moving call is audited
  once, replays and failures never.
- Concurrent duplicates never both run: on PostgreSQL the second claim blocks on the unique
  index until the first transaction ends, then replays its response (or runs if the first
  rolled back). SQLite runs one writing transaction at a time, which gives the same result.
"""

# No `from __future__ import annotations` here: the dependency built in claim_dependency()
# annotates with a closure variable, which FastAPI can only see as a real object.
import functools
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ParamSpec, Protocol, TypeVar

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import insert as db_insert
from incentive.db import utcnow
from incentive.deps import Session
from incentive.errors import IdempotencyConflict
from incentive.kit.models import IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x20-\x7e]+$"


class Caller(Protocol):
    """Who calls, as far as keys and audit care (``auth.principal.Principal`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def role(self) -> str: ...


CallerDependency = Callable[..., Awaitable[Caller]]


#: The ``Idempotency-Key`` header of a value-moving POST (required; 1-200 printable ASCII).
IdempotencyKey = Annotated[
    str,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=200,
        pattern=KEY_PATTERN,
        description="Unique per intended operation; a retry with the same key (and body) "
        "answers the first response instead of running again.",
    ),
]


def answer(body: Any, status_code: int, *, replayed: bool) -> JSONResponse:
    """The response of a value-moving POST. The one replay convention, for routes using
    ``Claim`` and for those keeping their own key (purchases): a replay is the original
    status code and body, with ``Idempotent-Replayed: true``."""
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return JSONResponse(body, status_code=status_code, headers=headers)


def fingerprint(method: str, path: str, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


@dataclass
class Claim:
    """The caller's claim on a key within the current transaction."""

    session: AsyncSession
    scope: str
    key: str
    fingerprint: str
    replay_status: int | None = None
    replay_body: Any = None
    actor: Caller | None = None
    action: str = ""

    @property
    def is_replay(self) -> bool:
        return self.replay_status is not None

    def replayed_response(self) -> JSONResponse:
        assert self.replay_status is not None
        return answer(self.replay_body, self.replay_status, replayed=True)

    async def complete(self, status_code: int, body: Any) -> None:
        """Store the response in the record and run the ``on_complete`` hook (the audit
        entry), both in the transaction of the work. ``RuntimeError`` before anything is
        written when no hook is installed: a value-moving call is never left unaudited."""
        hook = _installed_hook()
        await (await self.session.connection()).execute(
            _COMPLETE,
            {"of_scope": self.scope, "of_key": self.key, "code": status_code, "body": body},
        )
        await hook(self, status_code)


# Hot-path statements built once (Core, compiled once per dialect and cached by SQLAlchemy).
_RECORDS = IdempotencyRecord.__table__
_COMPLETE = (
    update(IdempotencyRecord)
    .where(
        IdempotencyRecord.scope == bindparam("of_scope"),
        IdempotencyRecord.key == bindparam("of_key"),
    )
    .values(status="completed", response_status=bindparam("code"), response_body=bindparam("body"))
)
_CLAIM = {
    dialect: db_insert(dialect, _RECORDS)
    .values(
        scope=bindparam("scope"),
        key=bindparam("key"),
        fingerprint=bindparam("fingerprint"),
        status="in_progress",
        created_at=bindparam("now"),
    )
    .on_conflict_do_nothing(index_elements=["scope", "key"])
    .returning(IdempotencyRecord.key)
    for dialect in ("postgresql", "sqlite")
}
_RECORDED = select(
    IdempotencyRecord.fingerprint,
    IdempotencyRecord.response_status,
    IdempotencyRecord.response_body,
).where(IdempotencyRecord.scope == bindparam("scope"), IdempotencyRecord.key == bindparam("key"))

CompletionHook = Callable[[Claim, int], Awaitable[None]]

_default_caller: CallerDependency | None = None
_completion_hook: CompletionHook | None = None


def use_default_caller(dependency: CallerDependency) -> None:
    """Install the caller dependency of routes that pass no ``principal=``. Once per process:
    installing the same one again does nothing, another one raises ``RuntimeError``."""
    global _default_caller
    if _default_caller is not None and _default_caller is not dependency:
        raise RuntimeError(f"kit.idempotency: a default caller is installed: {_default_caller}")
    _default_caller = dependency


def on_complete(hook: CompletionHook) -> None:
    """Install the hook awaited, in the work's transaction, each time a claim completes (the
    audit entry). Once per process, so each call is audited once: installing the same hook
    again does nothing, another one raises ``RuntimeError``."""
    global _completion_hook
    if _completion_hook is not None and _completion_hook is not hook:
        raise RuntimeError(f"kit.idempotency: an on_complete hook is installed: {_completion_hook}")
    _completion_hook = hook


def _installed_hook() -> CompletionHook:
    if _completion_hook is None:
        raise RuntimeError(
            "kit.idempotency: no on_complete hook installed, so this call would go unaudited; "
            "import incentive.auth.principal (it installs the audit entry) before serving"
        )
    return _completion_hook


def _installed_caller(principal: CallerDependency | None) -> CallerDependency:
    if principal is not None:
        return principal
    if _default_caller is None:
        raise RuntimeError(
            "kit.idempotency: no default caller installed; import incentive.auth.principal "
            "(it installs current_user) before building the route, or pass principal="
        )
    return _default_caller


async def claim_key(
    session: AsyncSession, *, scope: str, key: str, request_fingerprint: str
) -> Claim:
    """Claim ``key`` for ``scope`` or find the completed earlier request that holds it.

    Raises ``IdempotencyConflict`` when the key was used for a different request.
    """
    conn = await session.connection()
    params = {"scope": scope, "key": key}
    claimed = (
        await conn.execute(
            _CLAIM[conn.dialect.name],
            {**params, "fingerprint": request_fingerprint, "now": utcnow()},
        )
    ).first()
    claim = Claim(session, scope, key, request_fingerprint)
    if claimed is not None:
        return claim
    # The earlier holder has committed (its uncommitted claim would have blocked the insert),
    # so its record is complete.
    record = (await conn.execute(_RECORDED, params)).one()
    if record.fingerprint != request_fingerprint:
        raise IdempotencyConflict(
            f"{HEADER} {key!r} was already used for a different request",
            header=HEADER,
        )
    claim.replay_status = int(record.response_status)
    claim.replay_body = record.response_body
    return claim


async def purge_records(session: AsyncSession, *, older_than: datetime) -> int:
    """Forget keys claimed before ``older_than`` (retries are expected within hours)."""
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.created_at < older_than)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def claim_dependency(principal: CallerDependency | None = None) -> Callable[..., Any]:
    """Build the FastAPI dependency resolving to a ``Claim`` for the calling ``principal``
    (default: the installed default caller). Raises ``RuntimeError`` unless a caller and the
    ``on_complete`` hook are installed, so a route can never be built to run unaudited."""
    caller_dependency = _installed_caller(principal)
    _installed_hook()

    async def _claim(
        request: Request,
        session: Session,
        caller: Annotated[Caller, Depends(caller_dependency)],
        key: IdempotencyKey,
    ) -> Claim:
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        claim = await claim_key(
            session,
            scope=f"{caller.role}:{caller.id}",
            key=key,
            request_fingerprint=fingerprint(request.method, path, body),
        )
        claim.actor = caller
        claim.action = f"{request.method} {request.url.path}"
        return claim

    return _claim


P = ParamSpec("P")
R = TypeVar("R")
_CLAIM_PARAM = "idempotency_claim__"


def idempotent(
    *, status_code: int = 200, principal: CallerDependency | None = None
) -> Callable[[Callable[P, Awaitable[Any]]], Callable[P, Awaitable[Any]]]:
    """Decorator making a POST endpoint idempotent (see the module docstring); ``principal``
    is the caller dependency (default: the installed one, ``auth``'s ``current_user``).

    The endpoint's return value is serialised once (``jsonable_encoder``), stored with the
    claim and sent; the route's ``response_model`` still documents the shape.
    """
    dependency = claim_dependency(principal)

    def decorate(func: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[Any]]:
        # Evaluate string annotations against the endpoint's module, not this one.
        sig = inspect.signature(func, eval_str=True)
        annotation = Annotated[Claim, Depends(dependency)]
        # An endpoint that wants the key (e.g. to derive a domain key) declares `claim: Claim`.
        passes_claim = "claim" in sig.parameters and sig.parameters["claim"].annotation is Claim
        extra = inspect.Parameter(
            _CLAIM_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=annotation
        )

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            claim = kwargs["claim"] if passes_claim else kwargs.pop(_CLAIM_PARAM)
            assert isinstance(claim, Claim)
            if claim.is_replay:
                return claim.replayed_response()
            result = await func(*args, **kwargs)
            body = jsonable_encoder(result)
            await claim.complete(status_code, body)
            return answer(body, status_code, replayed=False)

        params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        if passes_claim:
            params = [p.replace(annotation=annotation) if p.name == "claim" else p for p in params]
        else:
            params.append(extra)
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate
