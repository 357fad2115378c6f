"""Access-token verification: every forged, stale or misused token is a 401; roles give 403."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import update

from incentive.app import create_app
from incentive.auth import keyring
from incentive.auth.models import User
from incentive.auth.tokens import issue_access_token
from incentive.db import Database
from incentive.settings import Settings
from tests.auth.clients import bearer, client_from, login
from tests.factories import make_merchant, make_user, make_user_row

ME = "/api/v1/me"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    # Hand-rolled because PyJWT itself refuses to HMAC with a PEM public key.
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _eddsa(header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey) -> str:
    # Hand-rolled so the header can hold what PyJWT will not write (a non-string kid).
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _assert_401(client: httpx.AsyncClient, headers: dict[str, str], detail: str) -> None:
    r = await client.get(ME, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["detail"] == detail


async def test_expired_token(client: httpx.AsyncClient, app: FastAPI, db: Database) -> None:
    user = await make_user_row(db, username="alice")
    token, _ = issue_access_token(
        app.state.keyring,
        user_id=user.id,
        name=user.username,
        role=user.role,
        merchant_id=None,
        ttl_seconds=-1,
    )
    await _assert_401(client, bearer(token), "token expired")


async def test_tampered_payload_and_signature(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    alice = await make_user(db, app, username="alice")
    header, payload, signature = alice.token.split(".")
    claims = _claims(alice.token) | {"role": "operator"}
    forged_payload = _b64(json.dumps(claims).encode())
    await _assert_401(client, bearer(f"{header}.{forged_payload}.{signature}"), "invalid token")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    await _assert_401(client, bearer(f"{header}.{payload}.{flipped}"), "invalid token")
    await _assert_401(client, bearer(f"{header}.{payload}."), "invalid token")


async def test_token_from_a_foreign_key_with_a_known_kid(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    alice = await make_user(db, app, username="alice")
    foreign = Ed25519PrivateKey.generate()
    token = jwt.encode(
        _claims(alice.token),
        foreign,
        algorithm="EdDSA",
        headers={"kid": app.state.keyring.active.kid},
    )
    await _assert_401(client, bearer(token), "invalid token")


@pytest.mark.parametrize(
    ("kid", "detail"),
    [
        ("no-such-key", "unknown signing key"),
        (None, "unknown signing key"),
        (7, "malformed token"),
        (["x"], "malformed token"),
    ],
)
async def test_unknown_missing_or_malformed_kid(
    client: httpx.AsyncClient, app: FastAPI, db: Database, kid: object, detail: str
) -> None:
    alice = await make_user(db, app, username="alice")
    header: dict[str, Any] = {"alg": "EdDSA", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    token = _eddsa(header, _claims(alice.token), app.state.keyring.active.private_key)
    await _assert_401(client, bearer(token), detail)


async def test_alg_none(client: httpx.AsyncClient, app: FastAPI, db: Database) -> None:
    alice = await make_user(db, app, username="alice")
    kid = app.state.keyring.active.kid
    token = jwt.encode(_claims(alice.token), None, algorithm="none", headers={"kid": kid})
    await _assert_401(client, bearer(token), "token algorithm not accepted")
    # Capitalisation games do not help either.
    unsigned = _b64(json.dumps({"alg": "None", "kid": kid}).encode())
    body = _b64(json.dumps(_claims(alice.token)).encode())
    await _assert_401(client, bearer(f"{unsigned}.{body}."), "token algorithm not accepted")


@pytest.mark.parametrize("encoding", ["raw", "pem"])
async def test_hs256_signed_with_the_public_key(
    client: httpx.AsyncClient, app: FastAPI, db: Database, encoding: str
) -> None:
    alice = await make_user(db, app, username="alice")
    public = app.state.keyring.active.public_key
    secret = (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if encoding == "raw"
        else public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    claims = _claims(alice.token) | {"role": "operator"}
    token = _hs256(
        {"alg": "HS256", "typ": "JWT", "kid": app.state.keyring.active.kid}, claims, secret
    )
    await _assert_401(client, bearer(token), "token algorithm not accepted")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJFZERTQSJ9",
        "e30.e30.e30",
        "\u00e9.\u00e9.\u00e9",
    ],
)
async def test_malformed_tokens(client: httpx.AsyncClient, token: str) -> None:
    r = await client.get(ME, headers={"Authorization": f"Bearer {token}".encode()})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_claims_missing_from_a_validly_signed_token(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    alice = await make_user(db, app, username="alice")
    ring = app.state.keyring
    claims = _claims(alice.token)
    del claims["jti"]
    token = jwt.encode(claims, ring.active.private_key, "EdDSA", headers={"kid": ring.active.kid})
    await _assert_401(client, bearer(token), "invalid token")


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", 1e300), ("exp", -1e300), ("iat", 1e300), ("exp", 2**70), ("exp", "soon")],
)
async def test_validly_signed_token_with_an_absurd_time_is_401(
    client: httpx.AsyncClient, app: FastAPI, db: Database, claim: str, value: Any
) -> None:
    alice = await make_user(db, app, username="alice")
    ring = app.state.keyring
    claims = {**_claims(alice.token), claim: value}
    token = jwt.encode(claims, ring.active.private_key, "EdDSA", headers={"kid": ring.active.kid})
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("scheme", ["Token", "Basic", "", "Bearer\t", "JWT"])
async def test_missing_bearer_scheme(
    client: httpx.AsyncClient, app: FastAPI, db: Database, scheme: str
) -> None:
    alice = await make_user(db, app, username="alice")
    value = f"{scheme} {alice.token}".strip() if scheme.strip() else alice.token
    await _assert_401(client, {"Authorization": value}, "missing bearer token")


async def test_token_in_a_cookie_or_query_is_ignored(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    alice = await make_user(db, app, username="alice")
    r = await client.get(ME, params={"access_token": alice.token})
    # Not a query parameter of any operation: refused by name, never read as a credential.
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["access_token"]
    client.cookies.set("access_token", alice.token)
    r = await client.get(ME, headers={"Cookie": f"Authorization=Bearer {alice.token}"})
    assert r.status_code == 401


async def test_blocked_user_and_changed_role_invalidate_tokens(
    client: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    alice = await make_user(db, app, username="alice")
    bob = await make_user(db, app, username="bob", role="operator")
    async with db.unit_of_work() as s:
        await s.execute(update(User).where(User.id == alice.user.id).values(blocked=True))
        await s.execute(update(User).where(User.id == bob.user.id).values(role="customer"))
    await _assert_401(client, alice.headers, "token subject no longer valid")
    await _assert_401(client, bob.headers, "token subject no longer valid")


async def test_deleted_subject_is_401(client: httpx.AsyncClient, app: FastAPI) -> None:
    token, _ = issue_access_token(
        app.state.keyring,
        user_id="0" * 32,
        name="ghost",
        role="operator",
        merchant_id=None,
        ttl_seconds=60,
    )
    await _assert_401(client, bearer(token), "token subject no longer valid")


async def test_wrong_role_is_403_and_right_role_passes(
    guarded_client: httpx.AsyncClient, guarded_app: FastAPI, db: Database
) -> None:
    merchant = await make_merchant(db, code="M1")
    customer = await make_user(db, guarded_app, username="cust")
    clerk = await make_user(
        db, guarded_app, username="clerk", role="merchant", merchant_id=merchant.id
    )
    operator = await make_user(db, guarded_app, username="op", role="operator")

    expected = {
        "/test/operator-only": [(customer, 403), (clerk, 403), (operator, 200)],
        "/test/customer-only": [(customer, 200), (clerk, 403), (operator, 403)],
        "/test/merchant-staff": [(customer, 403), (clerk, 200), (operator, 200)],
    }
    for path, by_actor in expected.items():
        for actor, status in by_actor:
            r = await guarded_client.get(path, headers=actor.headers)
            assert r.status_code == status, (path, actor.user.username, r.text)
            if status == 403:
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["type"].endswith("/forbidden")
        r = await guarded_client.get(path)
        assert r.status_code == 401


async def test_key_rotation_old_tokens_verify_and_new_tokens_use_new_kid(
    app: FastAPI, settings: Settings, db: Database
) -> None:
    await make_user_row(db, username="alice")
    old_kid = app.state.keyring.active.kid
    async with client_from(app, "127.0.0.1") as old_process:
        before = await login(old_process, "alice")

    new_key = keyring.generate(settings.data_dir / "keys")
    assert new_key.kid != old_kid
    restarted = create_app(settings, db)
    async with (
        restarted.router.lifespan_context(restarted),
        client_from(restarted, "127.0.0.1") as new_process,
        client_from(app, "127.0.0.1") as old_process,
    ):
        assert restarted.state.keyring.active.kid == new_key.kid
        # A token signed by the old key still verifies after the rotation...
        assert (
            await new_process.get(ME, headers=bearer(before["access_token"]))
        ).status_code == 200
        after = await login(new_process, "alice")
        # ...new tokens carry the new kid, and a process started before the rotation
        # picks the new key up from the shared key directory.
        assert jwt.get_unverified_header(after["access_token"])["kid"] == new_key.kid
        assert (await old_process.get(ME, headers=bearer(after["access_token"]))).status_code == 200


async def test_a_token_signed_by_a_key_removed_after_rotation_is_401(
    app: FastAPI, settings: Settings, db: Database
) -> None:
    await make_user_row(db, username="alice")
    directory = settings.data_dir / "keys"
    async with client_from(app, "127.0.0.1") as old_process:
        before = await login(old_process, "alice")
    keyring.generate(directory)
    restarted = create_app(settings, db)
    async with (
        restarted.router.lifespan_context(restarted),
        client_from(restarted, "127.0.0.1") as new_process,
    ):
        # Verified (and cached) while the old key is still in the directory...
        assert (
            await new_process.get(ME, headers=bearer(before["access_token"]))
        ).status_code == 200
        after = await login(new_process, "alice")
        # ...then the rotation ends: the old key's file is deleted.
        old_files = sorted(directory.glob("signing-*.pem"))[:-1]
        assert len(old_files) == 1
        old_files[0].unlink()

        await _assert_401(new_process, bearer(before["access_token"]), "unknown signing key")
        assert (await new_process.get(ME, headers=bearer(after["access_token"]))).status_code == 200


def test_generate_numbers_after_the_newest_file_and_keeps_keys_private(
    settings: Settings,
) -> None:
    directory = settings.data_dir / "keys"
    first = keyring.generate(directory)
    second = keyring.generate(directory)
    (directory / "signing-0001.pem").unlink()  # the documented end of a rotation
    third = keyring.generate(directory)

    names = sorted(p.name for p in directory.iterdir())
    assert names == ["signing-0002.pem", "signing-0003.pem"]
    assert all((directory / n).stat().st_mode & 0o777 == 0o600 for n in names)
    ring = keyring.KeyRing.load(directory)
    assert ring.active.kid == third.kid
    assert set(ring.by_kid) == {second.kid, third.kid}
    assert first.kid not in ring.by_kid
