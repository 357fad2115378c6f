"""Cached callers (``auth.principal_cache``) are refused as soon as their credential is taken
away: on the very next request in the process that made the change, and in another server
process through Redis (long before the cache's TTL)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from incentive.auth import partner_keys, service, sessions
from incentive.auth.principal_cache import Caches
from incentive.db import Database
from incentive.settings import Settings
from tests.auth.clients import bearer, login
from tests.factories import make_user_row
from tests.servers import running_server

ME = "/api/v1/me"
# Far beyond how long the two-process test waits: only an announcement can explain a refusal.
LONG_TTL = "60"
ANNOUNCED_WITHIN = 20.0


def _caches(app: FastAPI) -> Caches:
    caches: Caches = app.state.principal_caches
    return caches


async def _cached_me(client: httpx.AsyncClient, app: FastAPI, token: str) -> None:
    for _ in range(2):
        r = await client.get(ME, headers=bearer(token))
        assert r.status_code == 200, r.text
    assert _caches(app).bearer.get(token) is not None  # the second answer came from the cache


async def test_logout_refuses_the_cached_token_on_the_next_request(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    await make_user_row(db, username="alice")
    token = (await login(client, "alice"))["access_token"]
    await _cached_me(client, app, token)
    assert (await client.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 401
    assert r.json()["detail"] == "token revoked"


async def test_blocking_refuses_every_cached_token_of_the_user_on_the_next_request(
    client: httpx.AsyncClient, app: FastAPI, db: Database, settings: Settings
) -> None:
    await make_user_row(db, username="alice")
    await make_user_row(db, username="bob")
    alice = [(await login(client, "alice"))["access_token"] for _ in range(2)]
    bob = (await login(client, "bob"))["access_token"]
    for token in (*alice, bob):
        await _cached_me(client, app, token)
    async with db.unit_of_work() as s:  # the command line's service call, in this process
        await sessions.set_user_blocked(s, "alice", True, settings)
    for token in alice:
        assert (await client.get(ME, headers=bearer(token))).status_code == 401
    assert (await client.get(ME, headers=bearer(bob))).status_code == 200


async def test_a_change_rolled_back_drops_nothing_and_a_committed_one_drops(
    client: httpx.AsyncClient, app: FastAPI, db: Database, settings: Settings
) -> None:
    await make_user_row(db, username="alice")
    token = (await login(client, "alice"))["access_token"]
    await _cached_me(client, app, token)

    async def block_then_fail() -> None:
        async with db.unit_of_work() as s:
            await sessions.set_user_blocked(s, "alice", True, settings)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await block_then_fail()
    assert _caches(app).bearer.get(token) is not None
    assert (await client.get(ME, headers=bearer(token))).status_code == 200


async def test_a_reused_refresh_token_refuses_the_cached_access_token(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    await make_user_row(db, username="alice")
    first = await login(client, "alice")
    await _cached_me(client, app, first["access_token"])
    refresh = {"refresh_token": first["refresh_token"]}
    assert (await client.post("/api/v1/auth/refresh", json=refresh)).status_code == 200
    assert (await client.post("/api/v1/auth/refresh", json=refresh)).status_code == 401
    assert (await client.get(ME, headers=bearer(first["access_token"]))).status_code == 401


async def _cli(env: dict[str, str], *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def _refused_within(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    """Poll until the server refuses; the status it answered last."""
    deadline = time.monotonic() + ANNOUNCED_WITHIN
    while True:
        status = (await client.get(ME, headers=headers)).status_code
        if status != 200 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_a_change_in_one_process_is_refused_by_another_through_redis(
    db: Database,
    database_url: str,
    data_dir: Path,
    tmp_path: Path,
    redis_url: str | None,
    redis: Any,
) -> None:
    """Two real servers sharing PostgreSQL and Redis, callers cached on the second: a logout
    on the first, a block and a partner key revoked from the command line, are each refused
    by the second well before its (long) cache TTL runs out."""
    assert redis_url is not None
    for name in ("alice", "bob"):
        await make_user_row(db, username=name)
    async with db.unit_of_work() as s:
        partner, api_key = await service.create_partner(s, "BANK", "Bank")
        key_id = (await partner_keys.usable_keys(s, partner.id))[0].id
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    extra = {"INCENTIVE_REDIS_URL": redis_url, "INCENTIVE_PRINCIPAL_CACHE_SECONDS": LONG_TTL}
    async with running_server(data_dir, database_url, extra) as one:
        shutil.copytree(data_dir / "keys", second_dir / "keys")  # both verify the same tokens
        async with (
            running_server(second_dir, database_url, extra) as two,
            httpx.AsyncClient(base_url=one.base_url, timeout=30) as first,
            httpx.AsyncClient(base_url=two.base_url, timeout=30) as second,
        ):
            alice = bearer((await login(first, "alice"))["access_token"])
            bob = bearer((await login(first, "bob"))["access_token"])
            partner_headers = {"X-API-Key": api_key}
            for headers in (alice, bob, partner_headers):
                for _ in range(2):  # the second answer from the second server's cache
                    r = await second.get(
                        "/api/v1/points-files" if "X-API-Key" in headers else ME,
                        headers=headers,
                    )
                    assert r.status_code == 200, r.text

            assert (await first.post("/api/v1/auth/logout", headers=alice)).status_code == 204
            assert await _refused_within(second, alice) == 401

            env = {**one.env, **extra}
            await _cli(env, "users", "block", "bob")
            assert await _refused_within(second, bob) == 401

            await _cli(env, "partners", "revoke-key", "BANK", key_id)
            deadline = time.monotonic() + ANNOUNCED_WITHIN
            while True:
                r = await second.get("/api/v1/points-files", headers=partner_headers)
                if r.status_code != 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 401
