"""Who is calling: resolved from a Bearer access token or a partner API key."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import bindparam, exists, select
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import OperationalError

from incentive.auth.audit import record_idempotent_call
from incentive.auth.keyring import KeyRing, SigningKey
from incentive.auth.metrics import REJECTED_CREDENTIALS
from incentive.auth.models import RevokedToken, User
from incentive.auth.partner_keys import partner_for_key
from incentive.auth.principal_cache import Caches
from incentive.auth.tokens import verify_access_token
from incentive.deps import database
from incentive.errors import Forbidden, ServiceUnavailable, Unauthorized
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


def keyring(request: Request) -> KeyRing:
    ring: KeyRing = request.app.state.keyring
    return ring


def caches(request: Request) -> Caches:
    found: Caches = request.app.state.principal_caches
    return found


@dataclass(frozen=True)
class _Bearer:
    """A cached bearer caller: the principal and the key that verified its token."""

    principal: Principal
    kid: str
    key: SigningKey
    expires_at: float


# Built once: the user and the token's revocation, one round trip.
_USER_AND_REVOCATION = select(
    User.username,
    User.role,
    User.merchant_id,
    User.blocked,
    exists().where(RevokedToken.jti == bindparam("jti")).label("revoked"),
).where(User.id == bindparam("sub"))


_PG_COMPILED = _USER_AND_REVOCATION.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
_PG_USER_AND_REVOCATION = (str(_PG_COMPILED), tuple(_PG_COMPILED.positiontup or ()))


async def _user_and_revocation(request: Request, jti: str, sub: str) -> Any:
    """(username, role, merchant_id, blocked, revoked) of the token's user and ``jti``, or
    None when there is no such user: one autocommit read.

    On PostgreSQL the statement, compiled once, goes straight to asyncpg's prepared-statement
    cache on the pooled connection: a cache miss is on the path of every new caller.
    """
    params = {"jti": jti, "sub": sub}
    async with database(request).reader() as conn:
        if conn.dialect.name != "postgresql":
            try:
                return (await conn.execute(_USER_AND_REVOCATION, params)).one_or_none()
            except OperationalError as exc:  # SQLite's lock busy past its timeout (deps.py)
                raise ServiceUnavailable("database busy, retry shortly", retry_after=1) from exc
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        sql, order = _PG_USER_AND_REVOCATION
        try:
            return await driver.fetchrow(sql, *(params[name] for name in order))
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            # What SQLAlchemy would have reported as an invalidated connection (deps.py).
            raise ServiceUnavailable("database connection lost, retry", retry_after=1) from exc


async def bearer_principal(request: Request, authorization: str | None) -> Principal:
    """The caller of an ``Authorization`` header value (401 for anything but a live bearer
    token of a user who may still sign in); cached, see ``principal_cache``."""
    try:
        return await _bearer_principal(request, authorization)
    except Unauthorized:
        REJECTED_CREDENTIALS.labels("bearer").inc()
        raise


async def _bearer_principal(request: Request, authorization: str | None) -> Principal:
    scheme, token = get_authorization_scheme_param(authorization)
    if not (scheme and token) or scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    ring = keyring(request)
    cache = caches(request).bearer
    hit: _Bearer | None = cache.get(token)
    if (
        hit is not None
        and hit.expires_at > time.time()
        and ring.verification_key(hit.kid) is hit.key
    ):
        return hit.principal
    generation = cache.generation
    claims, kid, key = verify_access_token(ring, token)
    row = await _user_and_revocation(request, claims.jti, claims.sub)
    if row is None:
        raise Unauthorized("token subject no longer valid")
    username, role, merchant_id, blocked, revoked = row
    if revoked:
        raise Unauthorized("token revoked")
    if blocked or role != claims.role:
        raise Unauthorized("token subject no longer valid")
    principal = Principal(claims.sub, username, role, merchant_id, claims.jti, claims.exp)
    expires_at = claims.exp.timestamp()
    cache.put(
        token,
        _Bearer(principal, kid, key, expires_at),
        credential=claims.jti,
        subject=claims.sub,
        expires_at=expires_at,
        generation=generation,
    )
    return principal


async def partner_principal(request: Request, api_key: str | None) -> Principal:
    """The partner of an ``X-API-Key`` value (401 for a key that does not work now); cached,
    see ``principal_cache``."""
    if not api_key:
        REJECTED_CREDENTIALS.labels("api_key").inc()
        raise Unauthorized("missing X-API-Key")
    cache = caches(request).partner
    hit: tuple[Principal, float | None] | None = cache.get(api_key)
    if hit is not None and (hit[1] is None or hit[1] > time.time()):
        return hit[0]
    generation = cache.generation
    async with database(request).reader() as conn:
        partner = await partner_for_key(conn, api_key)
    if partner is None:
        REJECTED_CREDENTIALS.labels("api_key").inc()
        # One answer for unknown, expired and revoked keys and disabled partners.
        raise Unauthorized("unknown API key")
    principal = Principal(partner.partner_id, partner.code, "partner")
    expires_at = None if partner.expires_at is None else partner.expires_at.timestamp()
    cache.put(
        api_key,
        (principal, expires_at),
        credential=partner.key_hash,
        subject=partner.partner_id,
        expires_at=expires_at,
        generation=generation,
    )
    return principal


class BearerCaller(HTTPBearer):
    """The caller by bearer token, as one flat dependency (no nested security, session or
    role layers), documented as the ``HTTPBearer`` scheme; with ``roles``, a caller of
    another role is a 403. Resolved once per request however many dependencies ask."""

    def __init__(self, roles: tuple[str, ...] = ()) -> None:
        super().__init__(auto_error=False, description=BEARER_DESCRIPTION, scheme_name="HTTPBearer")
        self.roles = roles

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        state = request.scope.setdefault("state", {})
        principal: Principal | None = state.get("principal")
        if principal is None or principal.role == "partner":
            principal = await bearer_principal(request, request.headers.get("authorization"))
            state["principal"] = principal
        if self.roles and principal.role not in self.roles:
            raise Forbidden(
                f"role {principal.role!r} may not do this; needs one of {list(self.roles)}"
            )
        return principal


class PartnerKeyCaller(APIKeyHeader):
    """The partner by ``X-API-Key``, as one flat dependency documented as ``APIKeyHeader``."""

    def __init__(self) -> None:
        super().__init__(
            name="X-API-Key",
            auto_error=False,
            description=API_KEY_DESCRIPTION,
            scheme_name="APIKeyHeader",
        )

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        principal = await partner_principal(request, request.headers.get("x-api-key"))
        request.scope.setdefault("state", {})["principal"] = principal
        return principal


BEARER_DESCRIPTION = "JWT access token from /api/v1/auth/token"
API_KEY_DESCRIPTION = "partner API key"

_bearer_scheme = HTTPBearer(
    auto_error=False, description=BEARER_DESCRIPTION, scheme_name="HTTPBearer"
)
_api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description=API_KEY_DESCRIPTION, scheme_name="APIKeyHeader"
)


async def partner_or_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
    api_key: Annotated[str | None, Depends(_api_key_scheme)],
) -> Principal:
    """A partner by ``X-API-Key`` (tried first when present) or an operator by bearer token."""
    if api_key:
        principal = await partner_principal(request, api_key)
    else:
        principal = await bearer_principal(request, request.headers.get("authorization"))
        if not principal.is_operator:
            raise Forbidden("needs a partner's API key or an operator's token")
    request.scope.setdefault("state", {})["principal"] = principal
    return principal


current_user = BearerCaller()
current_partner = PartnerKeyCaller()


def require_roles(*roles: str) -> object:
    """Dependency: the caller must hold one of ``roles`` (401 without token, 403 otherwise).

    The caller is looked up outside the request transaction (``principal_cache``, else one
    autocommit read): endpoints that wait on other work (group commit, a drain pause) hold no
    connection, and on SQLite no write lock, meanwhile.
    """
    return Depends(BearerCaller(roles))


# The same dependency since callers are resolved outside the request transaction everywhere;
# the names stay for the routes that rely on it.
require_roles_outside_transaction = require_roles

CurrentUser = Annotated[Principal, Depends(current_user)]
CustomerOutsideTransaction = Annotated[Principal, require_roles_outside_transaction("customer")]
OperatorOutsideTransaction = Annotated[Principal, require_roles_outside_transaction("operator")]
CurrentPartner = Annotated[Principal, Depends(current_partner)]
PartnerOrOperator = Annotated[Principal, Depends(partner_or_operator)]
Operator = Annotated[Principal, require_roles("operator")]
Customer = Annotated[Principal, require_roles("customer")]
MerchantStaff = Annotated[Principal, require_roles("merchant", "operator")]

# kit/idempotency knows no domain: auth plugs in who calls (a key is scoped by the caller's
# role:id) and the audit entry of every completed value-moving call. Here, because every
# router with an idempotent route imports this module to name its callers, so both are in
# place before such a route is built (building one without them raises).
idempotency.use_default_caller(current_user)
idempotency.on_complete(record_idempotent_call)
