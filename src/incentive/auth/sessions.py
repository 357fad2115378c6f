"""Sign-in: login with throttling, rotating refresh tokens, logout, revocation, blocking.

Services flush and never commit; the entry point's unit of work does. One refusal here writes
security state that must survive the refusal: a reused refresh token revokes its family.
``refresh()`` flushes that state *before* raising, so its entry point must commit it (the
HTTP API answers these refusals as a response instead of raising them out of the unit of
work). Login failures are counted by ``auth.throttle``, outside the database.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.errors import (
    InvalidCredentials,
    InvalidRefreshToken,
    RefreshTokenReused,
)
from incentive.auth.keyring import KeyRing
from incentive.auth.metrics import LOGINS
from incentive.auth.models import RefreshToken, RevokedToken, User
from incentive.auth.passwords import (
    PASSWORD_MAX_LENGTH,
    dummy_hash,
    hash_password,
    needs_rehash,
    password_matches,
)
from incentive.auth.principal import Principal
from incentive.auth.principal_cache import forget_after_commit
from incentive.auth.service import user_by_username
from incentive.auth.throttle import LoginThrottle
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


async def login(
    session: AsyncSession,
    ring: KeyRing,
    settings: Settings,
    throttle: LoginThrottle,
    username: str,
    password: str,
    client_address: str | None,
) -> TokenPair:
    """Check the password and open a new session (a new refresh-token family).

    Refuses with ``LoginThrottled`` before any password work when a ceiling of
    ``auth.throttle`` is reached (nothing written). A wrong password, an unknown or a blocked
    user all get the same ``InvalidCredentials`` after the same work, and count as a failure.
    A success takes one of the username's logins (atomically: concurrent logins beyond the
    ceiling are refused), then the user's row is locked so that concurrent logins of one user
    open their sessions one at a time: after this one, at most ``max_sessions_per_user``
    stay live, the least recently refreshed revoked first.
    """
    address = client_address or "unknown"
    await throttle.admit(username, address)
    user = await user_by_username(session, username) if len(username) <= 64 else None
    password_hash = user.password_hash if user is not None else dummy_hash()
    matches = await password_matches(password_hash, password[:PASSWORD_MAX_LENGTH])
    if user is None or not matches or user.blocked or len(password) > PASSWORD_MAX_LENGTH:
        await throttle.count_failure(username, address)
        LOGINS.labels("invalid").inc()
        raise InvalidCredentials("invalid username or password")
    await throttle.count_success(username, address)
    await session.execute(select(User.id).where(User.id == user.id).with_for_update())
    if needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
    LOGINS.labels("success").inc()
    pair = await _issue_pair(session, ring, settings, user, family_id=new_id())
    await _revoke_sessions_beyond(session, settings, user.id, settings.max_sessions_per_user)
    return pair


async def _revoke_sessions_beyond(
    session: AsyncSession, settings: Settings, user_id: str, keep: int
) -> None:
    # A live session is a family whose newest refresh token is unused, unrevoked, unexpired:
    # rotation marks the previous token used, so each live family has exactly one such row.
    live = await session.execute(
        select(RefreshToken.family_id)
        .where(
            RefreshToken.user_id == user_id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > utcnow(),
        )
        .order_by(RefreshToken.created_at.desc(), RefreshToken.id.desc())
        .offset(keep)
    )
    for family_id in sorted(set(live.scalars())):
        await revoke_family(session, family_id, settings)


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
    forget_after_commit(session, credentials=[jti])


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
    forget_after_commit(session, subjects=[user.id])
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


async def purge_expired(session: AsyncSession) -> PurgeCounts:
    """Delete rows that can no longer matter: revoked access tokens and refresh tokens past
    their expiry (a token past expiry is refused anyway)."""
    now = utcnow()
    revoked = await session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    refresh_tokens = await session.execute(
        delete(RefreshToken).where(RefreshToken.expires_at < now)
    )
    return PurgeCounts(revoked_tokens=_rowcount(revoked), refresh_tokens=_rowcount(refresh_tokens))


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
