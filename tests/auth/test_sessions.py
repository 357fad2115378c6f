"""Login, throttling, refresh rotation with reuse detection, logout."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import jwt
from fastapi import FastAPI
from sqlalchemy import select, update

from incentive.auth.models import AuditEntry, RefreshToken, RevokedToken
from incentive.db import Database, utcnow
from tests.auth.clients import PASSWORD, bearer, login
from tests.auth.conftest import RowCounter, TableCounts
from tests.factories import make_merchant, make_user_row

TOKEN_URL = "/api/v1/auth/token"
REFRESH_URL = "/api/v1/auth/refresh"
LOGOUT_URL = "/api/v1/auth/logout"


async def _attempt(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(TOKEN_URL, json={"username": username, "password": password})


def _assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"].endswith("/" + slug)
    assert body["status"] == status
    return body


async def test_login_returns_pair_with_signed_claims(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    merchant = await make_merchant(db, code="M1")
    user = await make_user_row(db, username="clerk", role="merchant", merchant_id=merchant.id)

    body = await login(client, "clerk")

    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token"]
    assert "." not in body["refresh_token"]
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "EdDSA"
    assert header["kid"] == app.state.keyring.active.kid
    claims = jwt.decode(
        body["access_token"], app.state.keyring.active.public_key, algorithms=["EdDSA"]
    )
    assert claims["sub"] == user.id
    assert claims["name"] == "clerk"
    assert claims["role"] == "merchant"
    assert claims["mid"] == merchant.id
    assert claims["exp"] - claims["iat"] == 900
    assert len(claims["jti"]) == 32
    r = await client.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert r.status_code == 200
    assert r.json() == {
        "id": user.id,
        "username": "clerk",
        "role": "merchant",
        "merchant_id": merchant.id,
    }


async def test_refresh_token_is_stored_only_as_hash(
    client: httpx.AsyncClient, db: Database
) -> None:
    await make_user_row(db, username="alice")
    body = await login(client, "alice")
    async with db.unit_of_work() as s:
        stored = (await s.execute(select(RefreshToken))).scalar_one()
    assert stored.token_hash != body["refresh_token"]
    assert body["refresh_token"] not in stored.token_hash
    assert len(stored.token_hash) == 64


async def test_wrong_password_unknown_user_and_blocked_user_get_the_same_401(
    client: httpx.AsyncClient, db: Database, count_rows: RowCounter
) -> None:
    await make_user_row(db, username="alice")
    blocked = await make_user_row(db, username="bob")
    async with db.unit_of_work() as s:
        await s.execute(
            update(type(blocked)).where(type(blocked).id == blocked.id).values(blocked=True)
        )

    answers = [
        await _attempt(client, "alice", "wrong password"),
        await _attempt(client, "nobody", PASSWORD),
        await _attempt(client, "bob", PASSWORD),
    ]

    details = {_assert_problem(r, 401, "invalid-credentials")["detail"] for r in answers}
    assert details == {"invalid username or password"}
    assert all("www-authenticate" in r.headers for r in answers)
    assert await count_rows(RefreshToken) == 0
    assert await count_rows(AuditEntry) == 0


async def test_malformed_login_body_is_422_and_writes_nothing(
    client: httpx.AsyncClient, table_counts: TableCounts
) -> None:
    before = await table_counts()
    r = await client.post(TOKEN_URL, json={"username": "alice"})
    body = _assert_problem(r, 422, "validation")
    assert body["errors"][0]["field"] == "password"
    assert await table_counts() == before


async def test_refresh_rotates_within_the_family(client: httpx.AsyncClient, db: Database) -> None:
    await make_user_row(db, username="alice")
    first = await login(client, "alice")

    r = await client.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()

    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (
        await client.get("/api/v1/me", headers=bearer(second["access_token"]))
    ).status_code == 200
    async with db.unit_of_work() as s:
        tokens = list(
            (await s.execute(select(RefreshToken).order_by(RefreshToken.created_at))).scalars()
        )
    assert len(tokens) == 2
    assert tokens[0].family_id == tokens[1].family_id
    assert tokens[0].used_at is not None
    assert tokens[1].used_at is None
    assert all(t.revoked_at is None for t in tokens)


async def test_reused_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, db: Database, count_rows: RowCounter
) -> None:
    await make_user_row(db, username="alice")
    first = await login(client, "alice")
    other_session = await login(client, "alice")
    r = await client.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})
    second = r.json()

    # The thief (or a replay) presents the already used token again.
    r = await client.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})
    _assert_problem(r, 401, "refresh-token-reused")

    # Every token of that family is dead: the rotated refresh token and both access tokens.
    r = await client.post(REFRESH_URL, json={"refresh_token": second["refresh_token"]})
    _assert_problem(r, 401, "invalid-refresh-token")
    for access in (first["access_token"], second["access_token"]):
        r = await client.get("/api/v1/me", headers=bearer(access))
        _assert_problem(r, 401, "unauthorized")
    # The user's other session (another family) is untouched.
    me = await client.get("/api/v1/me", headers=bearer(other_session["access_token"]))
    assert me.status_code == 200
    assert await count_rows(RevokedToken) == 2
    async with db.unit_of_work() as s:
        audit = (await s.execute(select(AuditEntry))).scalar_one()
    assert audit.action == "auth.refresh_token_reused"


async def test_unknown_and_expired_refresh_tokens_are_refused_without_writes(
    client: httpx.AsyncClient, db: Database, table_counts: TableCounts
) -> None:
    await make_user_row(db, username="alice")
    pair = await login(client, "alice")
    async with db.unit_of_work() as s:
        await s.execute(update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    before = await table_counts()

    r = await client.post(REFRESH_URL, json={"refresh_token": "not-a-token"})
    _assert_problem(r, 401, "invalid-refresh-token")
    r = await client.post(REFRESH_URL, json={"refresh_token": pair["refresh_token"]})
    body = _assert_problem(r, 401, "invalid-refresh-token")
    assert body["detail"] == "refresh token expired"

    assert await table_counts() == before
    async with db.unit_of_work() as s:
        token = (await s.execute(select(RefreshToken))).scalar_one()
    assert token.used_at is None


async def test_refresh_of_a_blocked_user_is_refused(
    client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_user_row(db, username="alice")
    pair = await login(client, "alice")
    async with db.unit_of_work() as s:
        await s.execute(update(type(user)).where(type(user).id == user.id).values(blocked=True))
    r = await client.post(REFRESH_URL, json={"refresh_token": pair["refresh_token"]})
    _assert_problem(r, 401, "invalid-refresh-token")

    # No new pair was issued, and the session is over: its one refresh token is revoked and
    # its access token with it, even once the user is unblocked.
    async with db.unit_of_work() as s:
        tokens = list((await s.scalars(select(RefreshToken))).all())
        revoked = list((await s.scalars(select(RevokedToken.jti))).all())
        await s.execute(update(type(user)).where(type(user).id == user.id).values(blocked=False))
    assert len(tokens) == 1
    assert tokens[0].user_id == user.id
    assert tokens[0].revoked_at is not None
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert tokens[0].access_jti == claims["jti"]
    assert revoked == [claims["jti"]]
    r = await client.get("/api/v1/me", headers=bearer(pair["access_token"]))
    _assert_problem(r, 401, "unauthorized")
    r = await client.post(REFRESH_URL, json={"refresh_token": pair["refresh_token"]})
    _assert_problem(r, 401, "invalid-refresh-token")


async def test_logout_revokes_access_token_and_refresh_family(
    client: httpx.AsyncClient, db: Database, count_rows: RowCounter
) -> None:
    await make_user_row(db, username="alice")
    first = await login(client, "alice")
    second = (await client.post(REFRESH_URL, json={"refresh_token": first["refresh_token"]})).json()

    r = await client.post(LOGOUT_URL, headers=bearer(second["access_token"]))
    assert r.status_code == 204

    for access in (first["access_token"], second["access_token"]):
        r = await client.get("/api/v1/me", headers=bearer(access))
        body = _assert_problem(r, 401, "unauthorized")
        assert body["detail"] == "token revoked"
        assert "www-authenticate" in r.headers
    r = await client.post(REFRESH_URL, json={"refresh_token": second["refresh_token"]})
    _assert_problem(r, 401, "invalid-refresh-token")
    # Logging out twice with the same token is a plain 401, not a crash.
    r = await client.post(LOGOUT_URL, headers=bearer(second["access_token"]))
    _assert_problem(r, 401, "unauthorized")
    assert await count_rows(RevokedToken) == 2


async def test_logout_without_token_is_401_and_writes_nothing(
    client: httpx.AsyncClient, table_counts: TableCounts
) -> None:
    before = await table_counts()
    r = await client.post(LOGOUT_URL)
    _assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert await table_counts() == before


async def test_concurrent_exchanges_of_one_refresh_token_never_both_succeed(
    client: httpx.AsyncClient, db: Database
) -> None:
    await make_user_row(db, username="alice")
    pair = await login(client, "alice")

    answers = await asyncio.gather(
        *(client.post(REFRESH_URL, json={"refresh_token": pair["refresh_token"]}) for _ in range(4))
    )

    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 401, 401, 401], [r.text for r in answers]
    winner = next(r.json() for r in answers if r.status_code == 200)
    # The losers looked like a replay, so the session is revoked, winner's tokens included.
    r = await client.post(REFRESH_URL, json={"refresh_token": winner["refresh_token"]})
    _assert_problem(r, 401, "invalid-refresh-token")
    r = await client.get("/api/v1/me", headers=bearer(winner["access_token"]))
    assert r.status_code == 401
