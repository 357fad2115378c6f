"""Partner API keys: issue, rotate with a grace period, revoke; disable a partner. Audited.

A key is stored only as its sha256 (keys are 256-bit random strings, so a fast hash is safe
and allows indexed lookup) and shown once, when issued. Requests resolve their key through
``auth.principal_cache``: every change here drops the partner's cached keys when it commits,
in this process at once and in the others through Redis (else within the cache's TTL).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.models import Partner, PartnerApiKey
from incentive.auth.principal_cache import forget_after_commit
from incentive.db import utcnow
from incentive.errors import NotFound
from incentive.kit.idempotency import Caller

API_KEY_PREFIX = "inc_"
SHOWN_PREFIX_LENGTH = 12
MAX_GRACE_SECONDS = 30 * 24 * 3600


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key: ``api_key`` is the only time the plain key is ever available."""

    row: PartnerApiKey
    api_key: str


def _usable(now: datetime) -> list[ColumnElement[bool]]:
    return [
        PartnerApiKey.revoked_at.is_(None),
        or_(PartnerApiKey.expires_at.is_(None), PartnerApiKey.expires_at > now),
    ]


async def issue_key(session: AsyncSession, partner: Partner) -> IssuedKey:
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    row = PartnerApiKey(
        partner_id=partner.id,
        prefix=api_key[:SHOWN_PREFIX_LENGTH],
        key_hash=hash_api_key(api_key),
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return IssuedKey(row, api_key)


async def partner_by_code(session: AsyncSession, code: str) -> Partner:
    partner = await session.scalar(select(Partner).where(Partner.code == code))
    if partner is None:
        raise NotFound(f"no partner {code!r}", code=code)
    return partner


async def usable_keys(session: AsyncSession, partner_id: str) -> list[PartnerApiKey]:
    """The partner's keys that still work (a replaced key until its grace ends)."""
    rows = await session.scalars(
        select(PartnerApiKey)
        .where(PartnerApiKey.partner_id == partner_id, *_usable(utcnow()))
        .order_by(PartnerApiKey.created_at, PartnerApiKey.id)
    )
    return list(rows)


async def rotate_key(
    session: AsyncSession, code: str, grace_seconds: int, *, actor: Caller | None = None
) -> IssuedKey:
    """Issue a new key; every key that works now keeps working for ``grace_seconds`` more
    (0: stops now), never longer than it would have anyway."""
    partner = await partner_by_code(session, code)
    now = utcnow()
    ends = now + timedelta(seconds=grace_seconds)
    # Row lock on the partner: two rotations at once both end the older keys' lives.
    await session.execute(select(Partner.id).where(Partner.id == partner.id).with_for_update())
    await session.execute(
        update(PartnerApiKey)
        .where(
            PartnerApiKey.partner_id == partner.id,
            *_usable(now),
            or_(PartnerApiKey.expires_at.is_(None), PartnerApiKey.expires_at > ends),
        )
        .values(expires_at=ends)
        .execution_options(synchronize_session=False)
    )
    issued = await issue_key(session, partner)
    forget_after_commit(session, subjects=[partner.id])
    await record_audit(
        session,
        actor,
        "partner.key_rotate",
        f"partner:{partner.id}",
        {"key_id": issued.row.id, "prefix": issued.row.prefix, "grace_seconds": grace_seconds},
    )
    return issued


async def revoke_key(
    session: AsyncSession, code: str, key_id: str, *, actor: Caller | None = None
) -> PartnerApiKey:
    """Revoke one key of the partner at once (revoking a revoked key changes nothing)."""
    partner = await partner_by_code(session, code)
    key = await session.scalar(
        select(PartnerApiKey).where(
            PartnerApiKey.id == key_id, PartnerApiKey.partner_id == partner.id
        )
    )
    if key is None:
        raise NotFound(f"partner {code!r} has no API key {key_id!r}", key_id=key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
        forget_after_commit(session, credentials=[key.key_hash], subjects=[partner.id])
        await record_audit(
            session,
            actor,
            "partner.key_revoke",
            f"partner:{partner.id}",
            {"key_id": key.id, "prefix": key.prefix},
        )
    return key


async def set_partner_disabled(
    session: AsyncSession, code: str, disabled: bool, *, actor: Caller | None = None
) -> Partner:
    """Disable (every key refused) or enable a partner; a no-op change is not audited."""
    partner = await partner_by_code(session, code)
    if (partner.disabled_at is not None) != disabled:
        partner.disabled_at = utcnow() if disabled else None
        await session.flush()
        forget_after_commit(session, subjects=[partner.id])
        await record_audit(
            session,
            actor,
            "partner.disable" if disabled else "partner.enable",
            f"partner:{partner.id}",
            {"code": partner.code},
        )
    return partner


@dataclass(frozen=True)
class KeyHolder:
    """The enabled partner of a key that works now, and until when the key works."""

    partner_id: str
    code: str
    key_hash: str
    expires_at: datetime | None


# Built once (hot path: every partner request that misses the cache).
_KEY_HOLDER = (
    select(Partner.id, Partner.code, PartnerApiKey.key_hash, PartnerApiKey.expires_at)
    .join(PartnerApiKey, PartnerApiKey.partner_id == Partner.id)
    .where(
        PartnerApiKey.key_hash == bindparam("key_hash"),
        Partner.disabled_at.is_(None),
        PartnerApiKey.revoked_at.is_(None),
        or_(PartnerApiKey.expires_at.is_(None), PartnerApiKey.expires_at > bindparam("now")),
    )
)


async def partner_for_key(
    session: AsyncSession | AsyncConnection, api_key: str
) -> KeyHolder | None:
    """The holder of a key that works now of an enabled partner, else None."""
    row = (
        await session.execute(_KEY_HOLDER, {"key_hash": hash_api_key(api_key), "now": utcnow()})
    ).one_or_none()
    return None if row is None else KeyHolder(str(row[0]), str(row[1]), str(row[2]), row[3])
