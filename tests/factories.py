"""Typed async factories for test data. Tokens are minted with the app's own key ring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from incentive.auth.models import Merchant, User
from incentive.auth.tokens import issue_access_token
from incentive.db import Database

_hasher = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


@dataclass
class Actor:
    user: User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_merchant(db: Database, code: str = "M001", name: str = "Shop") -> Merchant:
    async with db.unit_of_work() as s:
        m = Merchant(code=code, name=name)
        s.add(m)
        await s.flush()
        return m


async def make_user_row(
    db: Database,
    *,
    username: str,
    role: str = "customer",
    password: str = "correct horse battery",
    merchant_id: str | None = None,
) -> User:
    async with db.unit_of_work() as s:
        u = User(
            username=username,
            display_name=username,
            password_hash=_hasher.hash(password),
            role=role,
            merchant_id=merchant_id,
        )
        s.add(u)
        await s.flush()
    return u


async def make_user(
    db: Database,
    app: Any,
    *,
    username: str,
    role: str = "customer",
    password: str = "correct horse battery",
    merchant_id: str | None = None,
) -> Actor:
    u = await make_user_row(
        db, username=username, role=role, password=password, merchant_id=merchant_id
    )
    token, _ = issue_access_token(
        app.state.keyring,
        user_id=u.id,
        name=u.username,
        role=u.role,
        merchant_id=merchant_id,
        ttl_seconds=900,
    )
    return Actor(u, token)
