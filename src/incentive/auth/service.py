"""Identities: merchants, users (logins) and partner systems, each creation audited.

Services flush and never commit; the entry point's unit of work does. Signing in, tokens and
blocking a login are in ``auth.sessions``; the audit log in ``auth.audit`` (``record_audit``
is re-exported here for the domains that audit their own changes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Subquery, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.audit import record_audit
from incentive.auth.errors import NameTaken
from incentive.auth.models import ROLES, Merchant, Partner, User
from incentive.auth.partner_keys import API_KEY_PREFIX, issue_key
from incentive.auth.passwords import check_password, hash_password
from incentive.auth.principal import Principal
from incentive.db import utcnow
from incentive.errors import InvalidField
from incentive.kit.text import (
    BIDI_CONTROLS,
    CONTROL_CHARACTER,
    REFUSED_IN_LINE,
    REFUSED_IN_SHOWN_NAME,
    refused_character,
    refused_message,
)

USERNAME_RULE = re.compile(r"[A-Za-z0-9_.-]{3,64}")
CODE_RULE = re.compile(r"[A-Za-z0-9_.-]{2,64}")
NAME_MAX_LENGTH = 200
MERCHANT_ROLE = "merchant"


def _check_name(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidField(field, "must not be empty")
    if len(value) > NAME_MAX_LENGTH:
        raise InvalidField(field, f"at most {NAME_MAX_LENGTH} characters")
    char = refused_character(value, REFUSED_IN_LINE)
    if char is not None:
        raise InvalidField(field, CONTROL_CHARACTER, f"{field}: {refused_message(char)}")
    return value


def _check_code(field: str, value: str) -> str:
    if not CODE_RULE.fullmatch(value):
        raise InvalidField(field, "2-64 characters of A-Z a-z 0-9 _ . -")
    return value


async def create_merchant(
    session: AsyncSession, code: str, name: str, *, actor: Principal | None = None
) -> Merchant:
    code = _check_code("code", code)
    name = _check_name("name", name)
    if await merchant_by_code(session, code) is not None:
        raise NameTaken("code", code)
    merchant = Merchant(code=code, name=name, created_at=utcnow())
    session.add(merchant)
    await session.flush()
    await record_audit(session, actor, "merchant.create", f"merchant:{merchant.id}", {"code": code})
    return merchant


async def merchant_by_code(session: AsyncSession, code: str) -> Merchant | None:
    return (
        await session.execute(select(Merchant).where(Merchant.code == code))
    ).scalar_one_or_none()


async def create_user(
    session: AsyncSession,
    username: str,
    password: str,
    role: str,
    *,
    merchant_code: str | None = None,
    display_name: str = "",
    actor: Principal | None = None,
) -> User:
    """Create a login. Merchant staff must name an existing merchant; nobody else may."""
    if not USERNAME_RULE.fullmatch(username):
        raise InvalidField("username", "3-64 characters of A-Z a-z 0-9 _ . -")
    check_password(password)
    if role not in ROLES:
        raise InvalidField("role", f"one of {', '.join(ROLES)}")
    merchant_id: str | None = None
    if role == MERCHANT_ROLE:
        if not merchant_code:
            raise InvalidField("merchant", "required for role merchant")
        merchant = await merchant_by_code(session, merchant_code)
        if merchant is None:
            raise InvalidField("merchant", "must name an existing merchant code")
        merchant_id = merchant.id
    elif merchant_code:
        raise InvalidField("merchant", "only role merchant belongs to a merchant")
    if len(display_name) > NAME_MAX_LENGTH:
        raise InvalidField("display_name", f"at most {NAME_MAX_LENGTH} characters")
    refused = refused_character(display_name, REFUSED_IN_SHOWN_NAME)
    if refused is not None:
        raise InvalidField("display_name", CONTROL_CHARACTER, refused_message(refused))
    # Case-insensitive uniqueness: "Alice" must not be able to pose as "alice".
    taken = await session.execute(
        select(User.id).where(func.lower(User.username) == username.lower())
    )
    if taken.first() is not None:
        raise NameTaken("username", username)
    user = User(
        username=username,
        display_name=display_name.strip() or username,
        password_hash=await hash_password(password),
        role=role,
        merchant_id=merchant_id,
        blocked=False,
        created_at=utcnow(),
    )
    session.add(user)
    await session.flush()
    await record_audit(
        session, actor, "user.create", f"user:{user.id}", {"username": username, "role": role}
    )
    return user


async def user_by_username(session: AsyncSession, username: str) -> User | None:
    return (
        await session.execute(select(User).where(User.username == username))
    ).scalar_one_or_none()


@dataclass(frozen=True)
class Member:
    """A customer as a partner's points file names it (``member_id`` is the username)."""

    user_id: str
    username: str
    blocked: bool


async def members_by_username(session: AsyncSession, usernames: Iterable[str]) -> dict[str, Member]:
    """The customers among ``usernames`` (exact match), one query per 5,000 names."""
    wanted = sorted({u for u in usernames if 0 < len(u) <= 64})
    found: dict[str, Member] = {}
    for start in range(0, len(wanted), 5000):
        rows = await session.execute(
            select(User.id, User.username, User.blocked).where(
                User.username.in_(wanted[start : start + 5000]), User.role == "customer"
            )
        )
        found.update({str(r[1]): Member(str(r[0]), str(r[1]), bool(r[2])) for r in rows})
    return found


def members_table() -> Subquery:
    """The customers as a subquery ``(user_id, username, blocked)``, for callers that judge
    many member names in one statement (a staged points file) instead of looking them up."""
    return (
        select(User.id.label("user_id"), User.username, User.blocked)
        .where(User.role == "customer")
        .subquery("members")
    )


def shown_name(username: str, display_name: str) -> str:
    """The name others see of a user: the display name they chose, else their username
    masked (``a***e``): a login name is never shown to other users."""
    # A name kept before bidi controls were refused must not reorder what is shown around it.
    display_name = BIDI_CONTROLS.sub("", display_name).strip()
    if display_name and display_name != username:
        return display_name
    return f"{username[0]}***{username[-1]}" if len(username) > 2 else f"{username[:1]}***"


@dataclass(frozen=True)
class UserCard:
    """What another domain may know of a user: shown name (never the login name), role,
    merchant, account age."""

    id: str
    display_name: str
    role: str
    merchant_id: str | None
    created_at: datetime
    #: a blocked login (``auth.sessions``) may not sign in
    blocked: bool = False


async def user_cards(session: AsyncSession, user_ids: Iterable[str]) -> dict[str, UserCard]:
    """``{user id: card}`` for the users among ``user_ids`` (one query)."""
    wanted = sorted(set(user_ids))
    if not wanted:
        return {}
    rows = await session.execute(
        select(
            User.id,
            User.username,
            User.display_name,
            User.role,
            User.merchant_id,
            User.created_at,
            User.blocked,
        ).where(User.id.in_(wanted))
    )
    return {
        str(r[0]): UserCard(
            str(r[0]), shown_name(str(r[1]), str(r[2])), str(r[3]), r[4], r[5], bool(r[6])
        )
        for r in rows
    }


async def create_partner(
    session: AsyncSession, code: str, name: str, *, actor: Principal | None = None
) -> tuple[Partner, str]:
    """Register a partner system. Returns the plain API key, which is never stored or shown
    again (only its sha256 is kept)."""
    code = _check_code("code", code)
    name = _check_name("name", name)
    existing = await session.execute(select(Partner.id).where(Partner.code == code))
    if existing.first() is not None:
        raise NameTaken("code", code)
    partner = Partner(code=code, name=name, created_at=utcnow())
    session.add(partner)
    await session.flush()
    issued = await issue_key(session, partner)
    await record_audit(
        session,
        actor,
        "partner.create",
        f"partner:{partner.id}",
        {"code": code, "api_key_prefix": issued.row.prefix, "key_id": issued.row.id},
    )
    return partner, issued.api_key


async def partner_id_by_code(session: AsyncSession, code: str) -> str | None:
    """The id of the partner with this code; a partner's code never changes once created."""
    found = await session.scalar(select(Partner.id).where(Partner.code == code))
    return None if found is None else str(found)


IDENTITIES: dict[str, type[User | Merchant | Partner]] = {
    "user": User,
    "merchant": Merchant,
    "partner": Partner,
}


async def identity_exists(session: AsyncSession, kind: str, identity_id: str) -> bool:
    """Whether the ``kind`` (user, merchant or partner) with this id exists."""
    return await session.get(IDENTITIES[kind], identity_id) is not None


async def partner_codes(session: AsyncSession, partner_ids: Iterable[str]) -> dict[str, str]:
    """``{partner id: code}`` for the partners among ``partner_ids`` (one query)."""
    wanted = sorted(set(partner_ids))
    if not wanted:
        return {}
    rows = await session.execute(select(Partner.id, Partner.code).where(Partner.id.in_(wanted)))
    return {str(partner_id): str(code) for partner_id, code in rows}


__all__ = [
    "API_KEY_PREFIX",
    "IDENTITIES",
    "Member",
    "UserCard",
    "create_merchant",
    "create_partner",
    "create_user",
    "identity_exists",
    "members_by_username",
    "members_table",
    "merchant_by_code",
    "partner_codes",
    "partner_id_by_code",
    "record_audit",
    "user_by_username",
    "user_cards",
]
