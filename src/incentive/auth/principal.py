"""Who is calling: resolved from a Bearer access token or a partner API key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from incentive.auth.audit import record_idempotent_call
from incentive.auth.keyring import KeyRing
from incentive.auth.metrics import REJECTED_CREDENTIALS
from incentive.auth.models import RevokedToken, User
from incentive.auth.partner_keys import partner_for_key
from incentive.auth.tokens import decode_access_token
from incentive.deps import Session, database
from incentive.errors import Forbidden, Unauthorized
from incentive.kit import idempotency


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    role: str  # customer | merchant | operator | partner
    merchant_id: str | None = None
    jti: str | None = None  # access token id (bearer callers only)
    token_expires_at: datetime | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


_bearer = HTTPBearer(auto_error=False, description="JWT access token from /api/v1/auth/token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="partner API key")


def keyring(request: Request) -> KeyRing:
    ring: KeyRing = request.app.state.keyring
    return ring


async def current_user(
    request: Request,
    session: Session,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    try:
        return await _resolve_user(request, session, credentials)
    except Unauthorized:
        REJECTED_CREDENTIALS.labels("bearer").inc()
        raise


async def _resolve_user(
    request: Request,
    session: AsyncSession | AsyncConnection,
    credentials: HTTPAuthorizationCredentials | None,
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    claims = decode_access_token(keyring(request), credentials.credentials)
    # One round trip on the hot path of every request: the user and the token's revocation.
    revoked = (
        select(RevokedToken.jti).where(RevokedToken.jti == claims.jti).exists().label("revoked")
    )
    row = (
        await session.execute(
            select(User.username, User.role, User.merchant_id, User.blocked, revoked).where(
                User.id == claims.sub
            )
        )
    ).one_or_none()
    if row is not None and row.revoked:
        raise Unauthorized("token revoked")
    if row is None or row.blocked or row.role != claims.role:
        raise Unauthorized("token subject no longer valid")
    principal = Principal(
        claims.sub, row.username, row.role, row.merchant_id, claims.jti, claims.exp
    )
    request.state.principal = principal
    return principal


async def current_partner(
    request: Request,
    session: Session,
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    if not api_key:
        REJECTED_CREDENTIALS.labels("api_key").inc()
        raise Unauthorized("missing X-API-Key")
    partner = await partner_for_key(session, api_key)
    if partner is None:
        REJECTED_CREDENTIALS.labels("api_key").inc()
        # One answer for unknown, expired and revoked keys and disabled partners.
        raise Unauthorized("unknown API key")
    principal = Principal(partner[0], partner[1], "partner")
    request.state.principal = principal
    return principal


def require_roles(*roles: str) -> object:
    """Dependency: the caller must hold one of ``roles`` (401 without token, 403 otherwise)."""

    async def _check(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"role {principal.role!r} may not do this; needs one of {list(roles)}")
        return principal

    return Depends(_check)


def require_roles_outside_transaction(*roles: str) -> object:
    """Like :func:`require_roles`, but the caller is looked up outside the request
    transaction (``Database.reader``: autocommit, one round trip on PostgreSQL).

    For endpoints that wait on other work while they run (group commit, a drain pause):
    holding the request transaction meanwhile would keep a connection busy and, on SQLite,
    the write lock that the other work needs.
    """

    async def _check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        try:
            async with database(request).reader() as conn:
                principal = await _resolve_user(request, conn, credentials)
        except Unauthorized:
            REJECTED_CREDENTIALS.labels("bearer").inc()
            raise
        if principal.role not in roles:
            raise Forbidden(f"role {principal.role!r} may not do this; needs one of {list(roles)}")
        return principal

    return Depends(_check)


CurrentUser = Annotated[Principal, Depends(current_user)]
CustomerOutsideTransaction = Annotated[Principal, require_roles_outside_transaction("customer")]
OperatorOutsideTransaction = Annotated[Principal, require_roles_outside_transaction("operator")]
CurrentPartner = Annotated[Principal, Depends(current_partner)]
Operator = Annotated[Principal, require_roles("operator")]
Customer = Annotated[Principal, require_roles("customer")]
MerchantStaff = Annotated[Principal, require_roles("merchant", "operator")]

# kit/idempotency knows no domain: auth plugs in who calls (a key is scoped by the caller's
# role:id) and the audit entry of every completed value-moving call. Here, because every
# router with an idempotent route imports this module to name its callers, so both are in
# place before such a route is built (building one without them raises).
idempotency.use_default_caller(current_user)
idempotency.on_complete(record_idempotent_call)
