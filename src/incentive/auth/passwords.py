"""Password rules and argon2 hashing (off the event loop: argon2 is deliberately slow)."""

from __future__ import annotations

import asyncio
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from incentive.errors import InvalidField

PASSWORD_MIN_LENGTH = 8
# argon2 accepts any length; a cap keeps one request from burning CPU on megabytes.
PASSWORD_MAX_LENGTH = 1024

_hasher = PasswordHasher()


def check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise InvalidField("password", f"at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise InvalidField("password", f"at most {PASSWORD_MAX_LENGTH} characters")


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow: run it off the event loop so other requests keep flowing.
    return await asyncio.to_thread(_hasher.hash, password)


async def password_matches(password_hash: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """The hash was made with weaker parameters than today's: replace it at the next login."""
    return _hasher.check_needs_rehash(password_hash)


@cache
def dummy_hash() -> str:
    # Verified against for unknown usernames so they cost as much time as a wrong password.
    return _hasher.hash(secrets.token_urlsafe(16))
