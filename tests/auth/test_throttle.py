"""Login throttling: by (username, address), per username, per address, successful logins
too, the live-session cap, and X-Forwarded-For only from configured proxies.

On the PostgreSQL + Redis run the counters live in Redis (``tests/auth/conftest.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from incentive.app import create_app
from incentive.auth.models import RefreshToken, RevokedToken
from incentive.db import Database
from incentive.settings import Settings
from tests.auth.clients import PASSWORD, bearer, client_from
from tests.auth.conftest import TableCounts, deployment_settings
from tests.factories import make_user_row

TOKEN_URL = "/api/v1/auth/token"
WINDOW_SECONDS = 300
CEILINGS: dict[str, Any] = {
    "login_window_seconds": WINDOW_SECONDS,
    "login_max_failures": 3,
    "login_max_failures_per_username": 6,
    "login_max_failures_per_address": 8,
    "login_max_per_username": 12,
    "max_sessions_per_user": 4,
}
PROXY = "10.9.9.9"


@pytest.fixture
async def settings(data_dir: Path, redis_url: str | None) -> Settings:
    return await deployment_settings(
        data_dir, redis_url, forwarded_allow_ips=f"{PROXY},10.8.0.0/16", **CEILINGS
    )


async def _attempt(
    client: httpx.AsyncClient, username: str, password: str, **headers: str
) -> httpx.Response:
    return await client.post(
        TOKEN_URL, json={"username": username, "password": password}, headers=headers
    )


def _status(r: httpx.Response) -> int:
    if r.status_code == 429:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/login-throttled")
        assert r.json()["status"] == 429
        assert 0 < int(r.headers["retry-after"]) <= WINDOW_SECONDS
    return r.status_code


async def _fail(app: FastAPI, address: str, username: str, times: int) -> list[int]:
    async with client_from(app, address) as c:
        return [_status(await _attempt(c, username, "wrong password")) for _ in range(times)]


async def _login_status(app: FastAPI, address: str, username: str) -> int:
    async with client_from(app, address) as c:
        return _status(await _attempt(c, username, PASSWORD))


async def _refresh_rows(db: Database) -> list[RefreshToken]:
    async with db.unit_of_work() as s:
        return list((await s.scalars(select(RefreshToken).order_by(RefreshToken.created_at))).all())


async def test_guessing_from_one_address_does_not_lock_the_owner_out_elsewhere(
    app: FastAPI, db: Database, table_counts: TableCounts
) -> None:
    await make_user_row(db, username="alice")
    await make_user_row(db, username="bob")

    assert await _fail(app, "192.0.2.7", "alice", 4) == [401, 401, 401, 429]
    before = await table_counts()
    # The pair is throttled even with the right password, and nothing is written.
    assert await _login_status(app, "192.0.2.7", "alice") == 429
    assert await table_counts() == before
    # The owner, from their own address, is not locked out; the guesser's address may still
    # sign in another user (3 failures are below the address's ceiling).
    assert await _login_status(app, "198.51.100.4", "alice") == 200
    assert await _login_status(app, "192.0.2.7", "bob") == 200
    assert len(await _refresh_rows(db)) == 2


async def test_failures_of_one_username_from_many_addresses_reach_a_higher_ceiling(
    app: FastAPI, db: Database
) -> None:
    await make_user_row(db, username="alice")
    # 2 failures from each of 3 addresses: no pair reaches 3, the username reaches 6.
    for i in range(3):
        assert await _fail(app, f"203.0.113.{i + 1}", "alice", 2) == [401, 401]
    assert await _login_status(app, "203.0.113.50", "alice") == 429
    assert await _fail(app, "203.0.113.51", "alice", 1) == [429]
    assert await _refresh_rows(db) == []


async def test_failures_from_one_address_on_many_usernames_reach_its_ceiling(
    app: FastAPI, db: Database
) -> None:
    await make_user_row(db, username="alice")
    statuses = []
    for i in range(9):
        statuses += await _fail(app, "192.0.2.66", f"guess{i}", 1)
    assert statuses == [401] * 8 + [429]
    assert await _login_status(app, "192.0.2.66", "alice") == 429
    assert await _login_status(app, "192.0.2.67", "alice") == 200
    assert len(await _refresh_rows(db)) == 1


async def test_successful_logins_of_one_username_are_limited(app: FastAPI, db: Database) -> None:
    await make_user_row(db, username="alice")
    await make_user_row(db, username="bob")
    statuses = [await _login_status(app, f"198.51.100.{i % 5}", "alice") for i in range(14)]
    assert statuses == [200] * 12 + [429, 429]
    assert await _login_status(app, "198.51.100.1", "bob") == 200
    rows = await _refresh_rows(db)
    assert len(rows) == 13


async def test_concurrent_logins_leave_at_most_the_session_cap_live(
    app: FastAPI, db: Database
) -> None:
    user = await make_user_row(db, username="alice")
    async with client_from(app, "198.51.100.9") as c:
        answers = await asyncio.gather(*(_attempt(c, "alice", PASSWORD) for _ in range(30)))
        statuses = sorted(_status(r) for r in answers)
        assert statuses == [200] * 12 + [429] * 18

        rows = await _refresh_rows(db)
        assert len(rows) == 12
        assert {r.user_id for r in rows} == {user.id}
        live = [r for r in rows if r.revoked_at is None]
        assert len(live) == 4
        # The live sessions are the four newest; every older one is revoked with its access
        # token.
        assert live == rows[-4:]
        async with db.unit_of_work() as s:
            revoked = set((await s.scalars(select(RevokedToken.jti))).all())
        assert revoked == {r.access_jti for r in rows[:-4]}
        by_jti = {r.access_jti: r for r in rows}
        for r in answers:
            if r.status_code != 200:
                continue
            me = await c.get("/api/v1/me", headers=bearer(r.json()["access_token"]))
            jti = _jti(r.json()["access_token"])
            assert me.status_code == (200 if by_jti[jti].revoked_at is None else 401)


def _jti(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["jti"])


async def test_x_forwarded_for_is_trusted_only_from_configured_proxies(
    app: FastAPI, db: Database
) -> None:
    # Through a trusted proxy (an address or a network), each forwarded client is its own
    # address: one client's failures throttle that client only.
    for proxy, username in ((PROXY, "alice"), ("10.8.3.4", "bob")):
        await make_user_row(db, username=username)
        async with client_from(app, proxy) as c:
            forwarded = {"X-Forwarded-For": "203.0.113.10"}
            fails = [_status(await _attempt(c, username, "wrong", **forwarded)) for _ in range(4)]
            assert fails == [401, 401, 401, 429]
            other = {"X-Forwarded-For": "203.0.113.99"}
            assert _status(await _attempt(c, username, PASSWORD, **other)) == 200
    # From any other peer the header is ignored: changing it does not escape the throttle.
    await make_user_row(db, username="carol")
    async with client_from(app, "192.0.2.200") as c:
        spoofed = [
            _status(await _attempt(c, "carol", "wrong", **{"X-Forwarded-For": f"10.0.0.{i}"}))
            for i in range(4)
        ]
        assert spoofed == [401, 401, 401, 429]
    assert len(await _refresh_rows(db)) == 2


@pytest.fixture
async def second_process(settings: Settings, db: Database) -> AsyncIterator[FastAPI]:
    """Another API process of the same deployment (its own app, pools and throttle)."""
    other = create_app(settings, db)
    async with other.router.lifespan_context(other):
        yield other


@pytest.mark.redis
async def test_api_processes_share_the_counters_through_redis(
    app: FastAPI, second_process: FastAPI, db: Database
) -> None:
    await make_user_row(db, username="alice")
    assert await _fail(app, "192.0.2.7", "alice", 2) == [401, 401]
    assert await _fail(second_process, "192.0.2.7", "alice", 2) == [401, 429]
    assert await _login_status(app, "192.0.2.7", "alice") == 429
    statuses = [await _login_status(p, "198.51.100.1", "alice") for p in [app, second_process] * 7]
    assert statuses == [200] * 12 + [429, 429]
    assert len(await _refresh_rows(db)) == 12


async def test_default_settings_trust_no_forwarded_header(
    data_dir: Path, redis_url: str | None, db: Database
) -> None:
    plain = create_app(await deployment_settings(data_dir, redis_url, login_max_failures=2), db)
    async with plain.router.lifespan_context(plain):
        await make_user_row(db, username="alice")
        async with client_from(plain, "127.0.0.1") as c:
            statuses = [
                _status(await _attempt(c, "alice", "x", **{"X-Forwarded-For": f"10.1.1.{i}"}))
                for i in range(3)
            ]
    assert statuses == [401, 401, 429]
