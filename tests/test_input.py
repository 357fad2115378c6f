"""What a caller can send: text without control characters, one strict JSON parse per body,
and a request schema in which no string goes unchecked (issue 10 items 4 and 7).

Every refusal is a problem+json naming the field, and writes nothing (each table's row count
is compared before and after)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from re import (
    _constants as sre_constants,  # the stdlib regex parser (the public alias is deprecated)
)
from re import _parser as sre_parse
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from incentive import domains
from incentive.auth import service as auth
from incentive.db import Base, Database
from incentive.errors import InvalidField
from incentive.kit.jsonbody import JSONBodyRoute
from incentive.kit.text import TEXT_PATTERNS
from incentive.ledger import service as ledger
from tests.factories import Actor, make_merchant, make_user

NOW = datetime.now(UTC)
WINDOW = {
    "starts_at": (NOW - timedelta(hours=1)).isoformat(),
    "ends_at": (NOW + timedelta(days=1)).isoformat(),
}
SALE = {
    "name": "Tea drop",
    "sku": "TEA-1",
    "item_name": "Tea",
    "price_fen": 990,
    "total_stock": 10,
    **WINDOW,
}
CAMPAIGN = {
    "kind": "referral",
    "name": "Invite friends",
    "description": "line one\nline two\ttabbed",
    "rules": {"referrer_reward_points": 100, "max_referrals_per_user": 3},
    **WINDOW,
}


@dataclass
class World:
    op: Actor
    staff: Actor
    alice: Actor
    issuer: int
    account: int


@pytest.fixture
async def world(db: Database, app: Any) -> World:
    merchant = await make_merchant(db, code="M1")
    op = await make_user(db, app, username="op", role="operator")
    staff = await make_user(db, app, username="staff", role="merchant", merchant_id=merchant.id)
    alice = await make_user(db, app, username="alice")
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        account = await ledger.open_account(
            s, owner_type="user", owner_id=alice.user.id, asset="POINTS"
        )
    return World(op, staff, alice, issuer.id, account.id)


async def _rows(db: Database) -> dict[str, int]:
    async with db.unit_of_work() as s:
        return {
            t.name: int((await s.execute(select(func.count()).select_from(t))).scalar_one())
            for t in Base.metadata.sorted_tables
        }


def _transfer(w: World, **fields: Any) -> dict[str, Any]:
    return {
        "debit_account_id": w.issuer,
        "credit_account_id": w.account,
        "amount": 5,
        "kind": "grant",
        **fields,
    }


def _field(problem: dict[str, Any]) -> str:
    return str(problem["errors"][0]["field"])


async def _post(
    client: httpx.AsyncClient, actor: Actor | None, path: str, body: Any, key: str = "k1"
) -> httpx.Response:
    """POST ``body`` as JSON with ASCII escapes (``\\ud800`` cannot travel raw as UTF-8)."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    return await client.post(
        path, content=json.dumps(body), headers=headers | (actor.headers if actor else {})
    )


# ------------------------------------------------------------------ item 4: control characters

BAD_TEXT = [
    "\u0000",
    "\u0007",
    "\b",
    "\f",
    "\u001b",
    "\u007f",
    "\u0085",
    "\u009f",
    "\ud800",
    "\udfff",
]


async def _refused(
    db: Database, response: httpx.Response, field: str, rule: str = "control_character"
) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert _field(problem) == field, problem
    assert problem["errors"][0]["rule"] == rule, problem


@pytest.mark.parametrize("bad", BAD_TEXT, ids=[f"U+{ord(c):04X}" for c in BAD_TEXT])
async def test_control_characters_in_text_fields_are_422_naming_the_field(
    db: Database, client: httpx.AsyncClient, world: World, bad: str
) -> None:
    before = await _rows(db)
    w = world
    cases: list[tuple[Actor | None, str, Any, str]] = [
        (None, "/api/v1/auth/token", {"username": f"op{bad}", "password": "x"}, "username"),
        (None, "/api/v1/auth/token", {"username": "op", "password": f"p{bad}"}, "password"),
        (w.op, "/api/v1/transfers", _transfer(w, reference=f"order{bad}1"), "reference"),
        (w.op, "/api/v1/transfers", _transfer(w, metadata={"note": f"a{bad}"}), "metadata.note"),
        (w.op, "/api/v1/transfers", _transfer(w, metadata={f"k{bad}": 1}), None),
        (
            w.op,
            "/api/v1/transfers",
            _transfer(w, metadata={"deep": [{"x": ["ok", f"b{bad}"]}]}),
            "metadata.deep.0.x.1",
        ),
        (w.staff, "/api/v1/campaigns", {**CAMPAIGN, "name": f"Invite{bad}"}, "name"),
        (w.staff, "/api/v1/campaigns", {**CAMPAIGN, "description": f"a{bad}"}, "description"),
        (
            w.staff,
            "/api/v1/campaigns",
            {**CAMPAIGN, "rules": {**CAMPAIGN["rules"], "business_action": f"pay{bad}"}},
            "rules.business_action",
        ),
        (w.staff, "/api/v1/flash-sales", {**SALE, "name": f"Tea{bad}"}, "name"),
        (w.staff, "/api/v1/flash-sales", {**SALE, "item_name": f"Tea{bad}"}, "item_name"),
        (
            w.op,
            "/api/v1/accounts",
            {"owner_type": "platform", "owner_id": f"x{bad}", "asset": "CNY"},
            "owner_id",
        ),
        (w.op, "/api/v1/config/flash_sale.buckets", {"value": f"{bad}"}, "value"),
    ]
    for actor, path, body, field in cases:
        r = await (
            client.put(
                path,
                content=json.dumps(body),
                headers={**actor.headers, "Content-Type": "application/json"},
            )
            if "/config/" in path and actor is not None
            else _post(client, actor, path, body)
        )
        if field is None:  # a refused key: named with the character escaped
            assert r.status_code == 422, r.text
            assert _field(r.json()) == f"metadata.k\\u{ord(bad):04x}", r.text
        else:
            await _refused(db, r, field)
    assert await _rows(db) == before


@pytest.mark.parametrize("bad", ["\u0000", "\u0085", "\n", "\ud800"])
async def test_names_given_at_the_command_line_refuse_control_characters(
    db: Database, bad: str
) -> None:
    before = await _rows(db)
    for create in (
        lambda s: auth.create_merchant(s, code="M9", name=f"Sh{bad}op"),
        lambda s: auth.create_partner(s, code="P9", name=f"Ba{bad}nk"),
    ):
        with pytest.raises(InvalidField) as refused:
            async with db.unit_of_work() as s:
                await create(s)
        assert (refused.value.field, refused.value.rule) == ("name", "control_character")
    assert await _rows(db) == before


@pytest.mark.parametrize("bad", ["\u0000", "\u0085", "\n", "\t"])
async def test_control_characters_in_query_and_path_parameters_are_422(
    db: Database, client: httpx.AsyncClient, world: World, bad: str
) -> None:
    r = await client.get(
        "/api/v1/campaigns", params={"merchant": f"M{bad}1"}, headers=world.op.headers
    )
    await _refused(db, r, "merchant")
    assert r.json()["errors"][0]["in"] == "query"
    r = await client.get(f"/api/v1/config/flash_sale{quote(bad)}buckets", headers=world.op.headers)
    await _refused(db, r, "key")


async def test_multi_line_text_keeps_tab_and_newlines_single_line_text_refuses_them(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    r = await _post(client, world.staff, "/api/v1/campaigns", CAMPAIGN)
    assert r.status_code == 201, r.text
    assert r.json()["description"] == "line one\nline two\ttabbed"
    before = await _rows(db)
    for bad in ("\n", "\r", "\t", "\u2028"):
        r = await _post(client, world.staff, "/api/v1/campaigns", {**CAMPAIGN, "name": f"a{bad}b"})
        await _refused(db, r, "name")
        r = await _post(
            client, world.op, "/api/v1/transfers", _transfer(world, reference=f"a{bad}")
        )
        await _refused(db, r, "reference")
    assert await _rows(db) == before


# ------------------------------------------------------------------ item 7: limits


async def test_accounts_are_opened_only_for_owners_that_exist(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    r = await _post(client, world.staff, "/api/v1/campaigns", CAMPAIGN)
    campaign = r.json()["id"]
    async with db.unit_of_work() as s:
        partner, _ = await auth.create_partner(s, code="P1", name="Partner")
    existing = {
        "user": world.alice.user.id,
        "merchant": world.staff.user.merchant_id,
        "campaign": campaign,
        "partner": partner.id,
        "platform": "fees",
    }
    for owner_type, owner_id in existing.items():
        before = await _rows(db)
        if owner_type != "platform":
            body = {"owner_type": owner_type, "owner_id": "0" * 32, "asset": "CNY"}
            r = await _post(client, world.op, "/api/v1/accounts", body)
            assert r.status_code == 422, r.text
            assert (_field(r.json()), r.json()["errors"][0]["rule"]) == ("owner_id", "owner_exists")
            assert await _rows(db) == before
        body = {"owner_type": owner_type, "owner_id": owner_id, "asset": "CNY", "name": "extra"}
        r = await _post(client, world.op, "/api/v1/accounts", body)
        assert r.status_code == 200, r.text
        assert (r.json()["owner_type"], r.json()["owner_id"]) == (owner_type, owner_id)
        assert (await _rows(db))["accounts"] == before["accounts"] + 1


@pytest.mark.parametrize("blank", ["", " ", "   ", "\u3000"])
async def test_names_are_not_blank(
    db: Database, client: httpx.AsyncClient, world: World, blank: str
) -> None:
    before = await _rows(db)
    for path, body in (("/api/v1/campaigns", CAMPAIGN), ("/api/v1/flash-sales", SALE)):
        r = await _post(client, world.staff, path, {**body, "name": blank})
        assert r.status_code == 422, r.text
        assert _field(r.json()) == "name"
    r = await _post(client, world.staff, "/api/v1/flash-sales", {**SALE, "item_name": " "})
    assert (r.status_code, _field(r.json())) == (422, "item_name"), r.text
    assert await _rows(db) == before


async def test_metadata_is_bounded(db: Database, client: httpx.AsyncClient, world: World) -> None:
    before = await _rows(db)
    r = await _post(
        client, world.op, "/api/v1/transfers", _transfer(world, metadata={"a": "x" * 5000})
    )
    assert r.status_code == 422, r.text
    assert (_field(r.json()), r.json()["errors"][0]["rule"]) == ("metadata", "too_large")
    assert await _rows(db) == before
    r = await _post(
        client, world.op, "/api/v1/transfers", _transfer(world, metadata={"a": "x" * 4000})
    )
    assert r.status_code == 201, r.text


async def test_duplicate_keys_in_a_json_body_are_422_naming_the_key(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    before = await _rows(db)
    headers = {**world.op.headers, "Idempotency-Key": "dup", "Content-Type": "application/json"}
    body = (
        f'{{"debit_account_id": {world.issuer}, "credit_account_id": {world.account}, '
        '"amount": 5, "amount": 500000, "kind": "grant"}'
    )
    r = await client.post("/api/v1/transfers", content=body, headers=headers)
    await _refused(db, r, "amount", "duplicate_key")
    nested = body.replace('"amount": 500000', '"metadata": {"a": 1, "b": {"c": 1, "c": 2}}')
    r = await client.post("/api/v1/transfers", content=nested, headers=headers)
    await _refused(db, r, "metadata.b.c", "duplicate_key")
    assert await _rows(db) == before


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('"metadata": {"a": NaN}', "metadata.a"),
        ('"metadata": {"a": [1, -Infinity]}', "metadata.a.1"),
        ('"metadata": {"a": 1e999}', "metadata.a"),
        ('"metadata": {"a": ' + "9" * 5000 + "}", "metadata.a"),
        ('"reference": "x", "amount": ' + "1" * 4301, "amount"),
    ],
    ids=["nan", "infinity", "overflowing-float", "5000-digits", "4301-digit-amount"],
)
async def test_numbers_that_are_not_json_are_422_naming_the_field(
    db: Database, client: httpx.AsyncClient, world: World, raw: str, field: str
) -> None:
    before = await _rows(db)
    body = (
        f'{{"debit_account_id": {world.issuer}, "credit_account_id": {world.account}, '
        f'"kind": "grant", {raw}' + ("}" if '"amount"' in raw else ', "amount": 5}')
    )
    headers = {**world.op.headers, "Idempotency-Key": "nan", "Content-Type": "application/json"}
    r = await client.post("/api/v1/transfers", content=body, headers=headers)
    await _refused(db, r, field, "json_invalid")
    assert await _rows(db) == before


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
async def test_a_json_body_sent_as_another_content_type_is_415(
    db: Database, client: httpx.AsyncClient, world: World, content_type: str | None
) -> None:
    before = await _rows(db)
    headers = {**world.op.headers, "Idempotency-Key": "ct"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = json.dumps(_transfer(world))
    r = await client.post("/api/v1/transfers", content=body.encode(), headers=headers)
    assert r.status_code == 415, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/unsupported-media-type")
    assert _field(r.json()) == "body"
    assert await _rows(db) == before
    # the same body as JSON, and as a +json type, is taken
    for ok_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await client.post(
            "/api/v1/transfers",
            content=body,
            headers={**headers, "Content-Type": ok_type, "Idempotency-Key": ok_type},
        )
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("raw", "line", "column"),
    [
        (b'{"username": "op",\n  "password": }', 2, 15),
        (b'{"username": "op"\n\n"password": "x"}', 3, 1),
        (b'{"username": "op", "password": "x"', 1, 35),
        (b'{"username": "\xff\xfe"}', 1, 15),
        (b'{"username": "a\x00b", "password": "x"}', 1, 16),
        (b"[" * 100_000 + b"]" * 100_000, 1, 1),
    ],
    ids=["missing-value", "missing-comma", "unterminated", "invalid-utf8", "raw-nul", "deep"],
)
async def test_malformed_json_is_400_naming_body_with_line_and_column(
    db: Database, client: httpx.AsyncClient, world: World, raw: bytes, line: int, column: int
) -> None:
    before = await _rows(db)
    r = await client.post(
        "/api/v1/auth/token", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["type"].endswith("/malformed-json")
    assert problem["errors"][0]["field"] == "body"
    assert (problem["errors"][0]["line"], problem["errors"][0]["column"]) == (line, column)
    assert f"line {line}, column {column}" in problem["detail"]
    assert await _rows(db) == before


# ------------------------------------------------------------------ guards for what comes later


def test_every_route_parses_its_body_with_the_shared_json_route(app: Any) -> None:
    routes = [r for router in domains.routers() for r in router.routes]
    routes += app.routes  # the app's own (an included router is not an APIRoute)
    with_body = [r for r in routes if isinstance(r, APIRoute) and r.body_field]
    assert with_body, "no route with a body found: the walk is looking in the wrong place"
    plain = [f"{sorted(r.methods)} {r.path}" for r in with_body if not isinstance(r, JSONBodyRoute)]
    assert not plain, "routes not built by kit.jsonbody.JSONBodyRoute (set route_class):\n" + (
        "\n".join(plain)
    )
    document = app.openapi()
    for r in with_body:
        answers = document["paths"][f"/api/v1{r.path}"][next(iter(r.methods)).lower()]
        assert {"400", "415"} <= answers["responses"].keys(), r.path


_REFUSED = [
    chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]
]
_CATEGORIES = {
    sre_constants.CATEGORY_DIGIT: r"\d",
    sre_constants.CATEGORY_NOT_DIGIT: r"\D",
    sre_constants.CATEGORY_SPACE: r"\s",
    sre_constants.CATEGORY_NOT_SPACE: r"\S",
    sre_constants.CATEGORY_WORD: r"\w",
    sre_constants.CATEGORY_NOT_WORD: r"\W",
}


def _set_matches(items: list[tuple[Any, Any]], char: str) -> bool:
    negate = False
    hit = False
    for op, arg in items:
        if op is sre_constants.NEGATE:
            negate = True
        elif op is sre_constants.LITERAL:
            hit |= ord(char) == arg
        elif op is sre_constants.RANGE:
            hit |= arg[0] <= ord(char) <= arg[1]
        elif op is sre_constants.CATEGORY:
            hit |= re.fullmatch(_CATEGORIES[arg], char) is not None
        else:
            return True  # unknown: assume it matches
    return hit != negate


def _can_match(parsed: Any, char: str) -> bool:
    """Whether some position of the pattern can consume ``char``."""
    for op, arg in parsed:
        if op is sre_constants.LITERAL and ord(char) == arg:
            return True
        if op in (sre_constants.NOT_LITERAL, sre_constants.ANY) and ord(char) != arg:
            return True
        if op is sre_constants.IN and _set_matches(arg, char):
            return True
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT) and _can_match(arg[2], char):
            return True
        if op is sre_constants.SUBPATTERN and _can_match(arg[3], char):
            return True
        if op is sre_constants.BRANCH and any(_can_match(b, char) for b in arg[1]):
            return True
    return False


def _unchecked_strings(
    schema: Any, components: dict[str, Any], where: str, seen: set[str]
) -> list[str]:
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _unchecked_strings(components[name], components, f"{where}", seen)
    found: list[str] = []
    if schema.get("type") == "string" and not ({"enum", "const", "format"} & schema.keys()):
        pattern = schema.get("pattern")
        if pattern is None:
            found.append(f"{where}: a string without a pattern")
        elif pattern not in TEXT_PATTERNS:
            parsed = sre_parse.parse(pattern)
            leaks = [f"U+{ord(c):04X}" for c in _REFUSED if _can_match(parsed, c)]
            if leaks:
                found.append(f"{where}: pattern {pattern!r} lets {', '.join(leaks[:3])}… through")
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _unchecked_strings(sub, components, where, seen)
    for name, sub in schema.get("properties", {}).items():
        found += _unchecked_strings(sub, components, f"{where}.{name}", seen)
    found += _unchecked_strings(schema.get("items"), components, f"{where}[]", seen)
    found += _unchecked_strings(
        schema.get("additionalProperties"), components, f"{where}{{}}", seen
    )
    return found


def test_no_request_string_goes_unchecked(app: Any) -> None:
    """Every string a request can carry (body property, query, path or header parameter) is a
    ``kit.text`` type, an enum, a date-time, or has a pattern that refuses every control
    character. Free-form JSON (``metadata``, a config value) is checked by the body parse."""
    document = app.openapi()
    components = document["components"]["schemas"]
    found: list[str] = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                found += _unchecked_strings(
                    p["schema"], components, f"{method} {path} {p['in']} {p['name']}", set()
                )
            for media in op.get("requestBody", {}).get("content", {}).values():
                found += _unchecked_strings(
                    media["schema"], components, f"{method} {path} body", set()
                )
    assert not found, "unchecked request strings (use kit.text.Line/Prose/Name):\n" + "\n".join(
        sorted(set(found))
    )


def test_the_walk_finds_a_plain_string() -> None:
    components = {"X": {"type": "object", "properties": {"s": {"type": "string", "maxLength": 5}}}}
    assert _unchecked_strings({"$ref": "#/components/schemas/X"}, components, "body", set())
    leaky = {"type": "string", "pattern": "^[^<>]*$"}
    assert _unchecked_strings(leaky, {}, "q", set())
    closed = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"}
    assert not _unchecked_strings(closed, {}, "q", set())
