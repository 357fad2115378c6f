"""Every route that declares bearer security refuses bad tokens with 401 problem+json.

The routes are read from the live OpenAPI document at run time, so a route another domain
adds later is covered without touching this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from fastapi import APIRouter, FastAPI

from incentive.auth.principal import Operator
from incentive.auth.tokens import issue_access_token
from incentive.db import Database
from tests.auth.clients import bearer, login
from tests.auth.conftest import TableCounts
from tests.factories import make_user_row

BODY_METHODS = {"post", "put", "patch"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    template: str


def _bearer_scheme_names(spec: dict[str, Any]) -> set[str]:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    return {
        name
        for name, scheme in schemes.items()
        if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer"
    }


def _dummy(parameter: dict[str, Any]) -> str:
    schema = parameter.get("schema", {})
    kinds = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
    if kinds & {"integer", "number"}:
        return "1"
    return "dummy"


def bearer_operations(app: FastAPI) -> list[Operation]:
    spec = app.openapi()
    names = _bearer_scheme_names(spec)
    operations = []
    for template, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            requirements = operation.get("security", [])
            if not any(names & set(requirement) for requirement in requirements):
                continue
            path = template
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path":
                    path = path.replace("{" + parameter["name"] + "}", _dummy(parameter))
            operations.append(Operation(method, path, template))
    return operations


async def _call(
    client: httpx.AsyncClient, op: Operation, headers: dict[str, str]
) -> httpx.Response:
    if op.method in BODY_METHODS:
        return await client.request(
            op.method.upper(),
            op.path,
            headers=headers | {"Content-Type": "application/json"},
            content=json.dumps({}),
        )
    return await client.request(op.method.upper(), op.path, headers=headers)


async def _bad_credentials(
    app: FastAPI, db: Database, client: httpx.AsyncClient
) -> dict[str, dict[str, str]]:
    ring = app.state.keyring
    operator = await make_user_row(db, username="root", role="operator")
    valid, _ = issue_access_token(
        ring,
        user_id=operator.id,
        name=operator.username,
        role="operator",
        merchant_id=None,
        ttl_seconds=900,
    )
    expired, _ = issue_access_token(
        ring,
        user_id=operator.id,
        name=operator.username,
        role="operator",
        merchant_id=None,
        ttl_seconds=-5,
    )
    claims = jwt.decode(valid, options={"verify_signature": False})
    head, body, signature = valid.split(".")
    tampered = f"{head}.{body}.{signature[:-4]}AAAA"
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": ring.active.kid})
    revoked = (await login(client, "root"))["access_token"]
    r = await client.post("/api/v1/auth/logout", headers=bearer(revoked))
    assert r.status_code == 204
    return {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {valid}"},
        "malformed": bearer("not.a.jwt"),
        "tampered": bearer(tampered),
        "expired": bearer(expired),
        "alg none": bearer(unsigned),
        "revoked": bearer(revoked),
    }


async def test_every_bearer_route_refuses_bad_tokens_with_401(
    app: FastAPI, client: httpx.AsyncClient, db: Database, table_counts: TableCounts
) -> None:
    operations = bearer_operations(app)
    templates = {op.template for op in operations}
    # Guard against a vacuous pass: the auth routes themselves must be found.
    assert {"/api/v1/me", "/api/v1/auth/logout"} <= templates
    credentials = await _bad_credentials(app, db, client)
    before = await table_counts()

    failures = []
    for op in operations:
        for case, headers in credentials.items():
            r = await _call(client, op, headers)
            problem = r.headers.get("content-type") == "application/problem+json"
            challenge = r.headers.get("www-authenticate", "").startswith("Bearer")
            if r.status_code != 401 or not problem or not challenge:
                failures.append(f"{op.method.upper()} {op.template} [{case}] -> {r.status_code}")
            elif r.json().get("status") != 401:
                failures.append(f"{op.method.upper()} {op.template} [{case}] body {r.text}")

    assert not failures, "\n".join(failures)
    assert await table_counts() == before


def test_route_enumeration_sees_routes_added_later(app: FastAPI) -> None:
    router = APIRouter()

    @router.delete("/later/{thing_id}")
    async def later(thing_id: int, principal: Operator) -> None:
        return None

    app.include_router(router, prefix="/api/v1")
    app.openapi_schema = None
    found = {(op.method, op.path) for op in bearer_operations(app)}
    assert ("delete", "/api/v1/later/1") in found


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/api/v1/auth/token"])
def test_public_routes_declare_no_bearer_security(app: FastAPI, path: str) -> None:
    assert path not in {op.template for op in bearer_operations(app)}
