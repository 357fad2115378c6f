"""JWT access tokens: EdDSA only, ``kid`` header, claims sub/name/role/iat/exp/jti."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from incentive.auth.keyring import KeyRing, SigningKey
from incentive.db import new_id, utcnow
from incentive.errors import Unauthorized

ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    name: str
    role: str
    jti: str
    iat: datetime
    exp: datetime
    merchant_id: str | None = None


def issue_access_token(
    ring: KeyRing,
    *,
    user_id: str,
    name: str,
    role: str,
    merchant_id: str | None,
    ttl_seconds: int,
    jti: str | None = None,
) -> tuple[str, AccessClaims]:
    now = utcnow().replace(microsecond=0)
    claims = AccessClaims(
        sub=user_id,
        name=name,
        role=role,
        jti=jti or new_id(),
        iat=now,
        exp=now + timedelta(seconds=ttl_seconds),
        merchant_id=merchant_id,
    )
    payload: dict[str, Any] = {
        "sub": claims.sub,
        "name": claims.name,
        "role": claims.role,
        "iat": int(claims.iat.timestamp()),
        "exp": int(claims.exp.timestamp()),
        "jti": claims.jti,
    }
    if merchant_id:
        payload["mid"] = merchant_id
    token = jwt.encode(
        payload, ring.active.private_key, algorithm=ALGORITHM, headers={"kid": ring.active.kid}
    )
    return token, claims


def decode_access_token(ring: KeyRing, token: str) -> AccessClaims:
    """Verify signature (by ``kid``), algorithm and expiry; any failure is a 401."""
    return verify_access_token(ring, token)[0]


def verify_access_token(ring: KeyRing, token: str) -> tuple[AccessClaims, str, SigningKey]:
    """Like :func:`decode_access_token`, with the ``kid`` and the key that verified it."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise Unauthorized("token algorithm not accepted")
    kid = header.get("kid")
    key = ring.verification_key(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise Unauthorized("unknown signing key")
    claims = _verified(token, key)
    if claims.exp <= utcnow():
        raise Unauthorized("token expired")
    return claims, kid, key


@functools.lru_cache(maxsize=16_384)
def _verified(token: str, key: SigningKey) -> AccessClaims:
    """Signature and claims of ``token`` under ``key``; expiry is the caller's, on every use.

    Cached: the EdDSA check is the largest cost of an authenticated request and a client
    presents one token many times. Only successes are cached (an exception is not), and the
    key is part of the cache key, so a token whose key left the ring is checked anew (and
    refused). Revocation and the user's state are looked up per request, elsewhere.
    """
    try:
        data = jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "role", "iat", "exp", "jti"], "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token") from exc
    try:
        return AccessClaims(
            sub=str(data["sub"]),
            name=str(data.get("name", "")),
            role=str(data["role"]),
            jti=str(data["jti"]),
            iat=datetime.fromtimestamp(int(data["iat"]), tz=UTC),
            exp=datetime.fromtimestamp(int(data["exp"]), tz=UTC),
            merchant_id=data.get("mid"),
        )
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        # A validly signed token can still carry times no datetime holds (exp = 1e300).
        raise Unauthorized("invalid token claims") from exc
