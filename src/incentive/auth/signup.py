"""Self-service sign-up of customers, and the listeners told of each sign-up.

A sign-up creates a customer login (``service.create_user``: the same username rules and
argon2 hash as every user), then calls each registered listener in the same unit of work with
the facts of the sign-up (the referrals domain accepts the invite it carries). A listener that
raises rolls the whole sign-up back: nothing is written. Phone numbers and device ids are
never stored here: listeners get their peppered hashes (``auth.identity``) only.

Whether sign-up is open and its ceiling per address are checked by the route (live config).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth.models import User
from incentive.auth.service import create_user


@dataclass(frozen=True)
class Signup:
    user_id: str
    username: str
    created_at: datetime
    invite: str | None
    address_hash: str | None
    #: peppered hashes by kind (``phone``, ``device``) of what the caller sent
    signals: Mapping[str, str] = field(default_factory=dict)


#: answers a sign-up; what it returns (if anything) is shown to the caller as ``invite``
Listener = Callable[[AsyncSession, Signup], Awaitable[Mapping[str, Any] | None]]
_listeners: dict[str, Listener] = {}


def register_listener(name: str, listener: Listener) -> None:
    """Tell ``listener`` of every sign-up (idempotent per name)."""
    _listeners[name] = listener


async def signup(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    display_name: str = "",
    invite: str | None = None,
    address_hash: str | None = None,
    signals: Mapping[str, str] | None = None,
) -> tuple[User, Mapping[str, Any] | None]:
    """Create the customer and tell the listeners; (the user, the invite's answer)."""
    user = await create_user(session, username, password, "customer", display_name=display_name)
    facts = Signup(user.id, user.username, user.created_at, invite, address_hash, signals or {})
    answer: Mapping[str, Any] | None = None
    for listener in list(_listeners.values()):
        answer = await listener(session, facts) or answer
    return user, answer
