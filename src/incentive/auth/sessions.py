"""Sign-in: login with throttling, rotating refresh tokens, logout, revocation, blocking.

Services flush and never commit; the entry point's unit of work does. Two refusals here write
security state that must survive the refusal: a failed login counts a failure, and a reused
refresh token revokes its family. ``login()`` and ``refresh()`` flush that state *before*
raising, so their entry point must commit it (the HTTP API answers these refusals as a
response instead of raising them out of the unit of work).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.errors import (
    InvalidCredentials,
    InvalidRefreshToken,
    LoginThrottled,
    RefreshTokenReused,
)
from incentive.auth.keyring import KeyRing
from incentive.auth.metrics import LOGINS
from incentive.auth.models import LoginFailure, RefreshToken, RevokedToken, User
from incentive.auth.passwords import (
    PASSWORD_MAX_LENGTH,
    dummy_hash,
    hash_password,
    needs_rehash,
    password_matches,
)
from incentive.auth.principal import Principal
from incentive.auth.service import user_by_username
from incentive.auth.tokens import issue_access_token
from incentive.db import insert as db_insert
from incentive.db import new_id, utcnow
from incentive.errors import InvalidField, NotFound
from incentive.settings import Settings


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    access_jti: str


def _digest(secret: str) -> str:
    # Refresh tokens are 256-bit random strings, so sha256 is enough and allows indexed lookup.
    return hashlib.sha256(secret.encode()).hexdigest()


def _throttle_keys(username: str, client_address: str | None) -> list[str]:
    return [f"user:{username.lower()[:180]}", f"ip:{(client_address or 'unknown')[:180]}"]


async def _refuse_if_throttled(
    session: AsyncSession, keys: list[str], now: datetime, settings: Settings
) -> None:
    window = timedelta(seconds=settings.login_window_seconds)
    rows = await session.execute(select(LoginFailure).where(LoginFailure.key.in_(keys)))
    retry_after = 0
    for row in rows.scalars():
        ends = row.window_start + window
        if row.failures >= settings.login_max_failures and ends > now:
            retry_after = max(retry_after, math.ceil((ends - now).total_seconds()))
    if retry_after:
        LOGINS.labels("throttled").inc()
        raise LoginThrottled(
            "too many failed logins for this username or address; retry later",
            retry_after=retry_after,
        )


async def _count_failure(
    session: AsyncSession, keys: list[str], now: datetime, settings: Settings
) -> None:
    # One atomic upsert per key: concurrent failures all count, and a stale window restarts.
    window_over = LoginFailure.window_start <= now - timedelta(
        seconds=settings.login_window_seconds
    )
    for key in sorted(keys):
        stmt = db_insert(session, LoginFailure).values(key=key, window_start=now, failures=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={
                "failures": case((window_over, 1), else_=LoginFailure.failures + 1),
                "window_start": case(
                    (window_over, stmt.excluded.window_start), else_=LoginFailure.window_start
                ),
            },
        )
        await session.execute(stmt)


async def login(
    session: AsyncSession,
    ring: KeyRing,
    settings: Settings,
    username: str,
    password: str,
    client_address: str | None,
) -> TokenPair:
    """Check the password and open a new session (a new refresh-token family).

    Refuses with ``LoginThrottled`` (nothing written) when this username or this address
    reached ``login_max_failures`` within ``login_window_seconds``. A wrong password, an
    unknown or a blocked user all get the same ``InvalidCredentials`` after the same work;
    the failure is counted for both keys and flushed before raising, so the caller commits it.
    """
    now = utcnow()
    keys = _throttle_keys(username, client_address)
    await _refuse_if_throttled(session, keys, now, settings)
    user = await user_by_username(session, username) if len(username) <= 64 else None
    password_hash = user.password_hash if user is not None else dummy_hash()
    matches = await password_matches(password_hash, password[:PASSWORD_MAX_LENGTH])
    if user is None or not matches or user.blocked or len(password) > PASSWORD_MAX_LENGTH:
        await _count_failure(session, keys, now, settings)
        await session.flush()
        LOGINS.labels("invalid").inc()
        raise InvalidCredentials("invalid username or password")
    await session.execute(delete(LoginFailure).where(LoginFailure.key == keys[0]))
    if needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
    LOGINS.labels("success").inc()
    return await _issue_pair(session, ring, settings, user, family_id=new_id())


async def _issue_pair(
    session: AsyncSession, ring: KeyRing, settings: Settings, user: User, *, family_id: str
) -> TokenPair:
    access_token, claims = issue_access_token(
        ring,
        user_id=user.id,
        name=user.username,
        role=user.role,
        merchant_id=user.merchant_id,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    refresh_token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        RefreshToken(
            family_id=family_id,
            user_id=user.id,
            token_hash=_digest(refresh_token),
            access_jti=claims.jti,
            expires_at=now + timedelta(seconds=settings.refresh_token_ttl_seconds),
            created_at=now,
        )
    )
    await session.flush()
    return TokenPair(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=settings.access_token_ttl_seconds,
        access_jti=claims.jti,
    )


async def refresh(
    session: AsyncSession, ring: KeyRing, settings: Settings, refresh_token: str
) -> TokenPair:
    """Exchange a refresh token for a new pair in the same family; each token works once.

    The token is marked used by one conditional UPDATE, so two concurrent exchanges of the
    same token cannot both succeed. A token that comes back after use was stolen or replayed:
    its whole family is revoked (refresh tokens and their access tokens), flushed, and
    ``RefreshTokenReused`` raised; the caller commits the revocation.
    """
    now = utcnow()
    digest = _digest(refresh_token)
    claimed = (
        await session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.token_hash == digest,
                RefreshToken.used_at.is_(None),
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(RefreshToken.family_id, RefreshToken.user_id)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if claimed is None:
        token = (
            await session.execute(select(RefreshToken).where(RefreshToken.token_hash == digest))
        ).scalar_one_or_none()
        if token is None:
            raise InvalidRefreshToken("unknown refresh token")
        if token.revoked_at is not None:
            raise InvalidRefreshToken("refresh token revoked")
        if token.used_at is not None:
            await revoke_family(session, token.family_id, settings)
            await record_audit(
                session,
                None,
                "auth.refresh_token_reused",
                f"user:{token.user_id}",
                {"family_id": token.family_id},
            )
            raise RefreshTokenReused(
                "refresh token was already used; every token of this session is revoked"
            )
        raise InvalidRefreshToken("refresh token expired")
    family_id, user_id = claimed
    user = await session.get(User, user_id)
    if user is None or user.blocked:
        await revoke_family(session, family_id, settings)
        raise InvalidRefreshToken("user can no longer sign in")
    return await _issue_pair(session, ring, settings, user, family_id=family_id)


async def _revoke_access_token(session: AsyncSession, jti: str, expires_at: datetime) -> None:
    await session.execute(
        db_insert(session, RevokedToken)
        .values(jti=jti, expires_at=expires_at, revoked_at=utcnow())
        .on_conflict_do_nothing(index_elements=[RevokedToken.jti])
    )


async def revoke_family(session: AsyncSession, family_id: str, settings: Settings) -> None:
    """Revoke every refresh token of the family and every access token issued with them."""
    now = utcnow()
    ttl = timedelta(seconds=settings.access_token_ttl_seconds)
    issued = await session.execute(
        select(RefreshToken.access_jti, RefreshToken.created_at)
        .where(RefreshToken.family_id == family_id)
        .order_by(RefreshToken.access_jti)
    )
    for access_jti, created_at in issued.all():
        # An access token expires at most ttl after its refresh row was written.
        if created_at + ttl > now:
            await _revoke_access_token(session, access_jti, created_at + ttl)
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.flush()


async def logout(session: AsyncSession, principal: Principal, settings: Settings) -> None:
    """Revoke the caller's access token and the refresh family it was issued with."""
    if principal.jti is None:
        raise InvalidField("authorization", "logout needs a bearer access token")
    expires_at = principal.token_expires_at or utcnow() + timedelta(
        seconds=settings.access_token_ttl_seconds
    )
    await _revoke_access_token(session, principal.jti, expires_at)
    family_id = (
        await session.execute(
            select(RefreshToken.family_id).where(RefreshToken.access_jti == principal.jti)
        )
    ).scalar_one_or_none()
    if family_id is not None:
        await revoke_family(session, family_id, settings)
    await session.flush()


async def set_user_blocked(
    session: AsyncSession,
    username: str,
    blocked: bool,
    settings: Settings,
    *,
    actor: Principal | None = None,
) -> User:
    """Block or unblock a login. Blocking also revokes every session the user holds."""
    user = await user_by_username(session, username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    user.blocked = blocked
    await session.flush()
    if blocked:
        families = await session.execute(
            select(RefreshToken.family_id)
            .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
            .distinct()
        )
        for family_id in sorted(families.scalars()):
            await revoke_family(session, family_id, settings)
    await record_audit(
        session, actor, "user.block" if blocked else "user.unblock", f"user:{user.id}"
    )
    return user


@dataclass(frozen=True)
class PurgeCounts:
    revoked_tokens: int
    refresh_tokens: int
    login_failures: int


async def purge_expired(session: AsyncSession, settings: Settings) -> PurgeCounts:
    """Delete rows that can no longer matter: revoked access tokens and refresh tokens past
    their expiry (a token past expiry is refused anyway), and login failures whose window
    has ended."""
    now = utcnow()
    window_start = now - timedelta(seconds=settings.login_window_seconds)
    revoked = await session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    refresh_tokens = await session.execute(
        delete(RefreshToken).where(RefreshToken.expires_at < now)
    )
    failures = await session.execute(
        delete(LoginFailure).where(LoginFailure.window_start < window_start)
    )
    return PurgeCounts(
        revoked_tokens=_rowcount(revoked),
        refresh_tokens=_rowcount(refresh_tokens),
        login_failures=_rowcount(failures),
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
