"""Integers fit where they are kept (issue 10 item 6): every money, points and stock column is
BIGINT, and every integer the API accepts is bounded by what its column holds — the largest
allowed value is stored and read back exactly, one more is a 422 that writes nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import BigInteger, Integer, func, select, text
from sqlalchemy.dialects import postgresql

from incentive import domains
from incentive.db import Base, Database
from incentive.kit.amounts import MAX_COUNT, MAX_FEN
from incentive.ledger import service as ledger
from tests.factories import Actor, make_merchant, make_user

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

# A column named like this holds money, points or stock: it must be BIGINT.
VALUE_COLUMN = re.compile(r"fen|amount|points|balance|stock|quantity|total|sold|credited|price")

# INTEGER columns that may stay INTEGER, each bounded far below 2^31 by what it counts.
SMALL_INTEGERS = {
    "coupon_batches.rate_bp": "basis points, at most 10,000",
    "coupon_batches.valid_days": "days, at most 3,650",
    "coupons.rate_bp": "basis points, at most 10,000",
    "coupon_provider_calls.attempts": "attempts of one call (coupons.provider_call_attempts)",
    "config_revision.id": "the one row of the revision counter",
    "review_revision.id": "the one row of the word-list revision counter",
    "campaign_templates.version": "versions of one template (the API refuses above 2^31-1)",
    "campaigns.template_version": "a template version (the API refuses above 2^31-1)",
    "idempotency_records.response_status": "an HTTP status",
    "outbox.attempts": "delivery retries of one event",
    "campaigns.version": "edits of one campaign (the API refuses versions above 2^31-1)",
    "flash_sales.buckets": "stock sub-buckets, at most 1024",
    "partner_points_settings.stale_after_days": "days",
    "points_files.last_line": "line of a file (files are bounded by max_file_bytes)",
    "points_files.next_line": "line of a file",
    "points_files.batch_size": "records per crediting batch",
    "points_files.concurrency": "batches in flight",
    "points_files.delivery_attempts": "delivery retries of one answer",
    "points_files.stage_attempts": "failed tries of one stage (INCENTIVE_POINTS_STAGE_ATTEMPTS)",
    "points_records.line_no": "line of a file",
    "points_credited_records.line_no": "line of a file",
    "points_batches.first_line": "line of a file",
    "points_batches.last_line": "line of a file",
    "points_batches.attempts": "retries of one batch",
    "points_batches.ok_count": "records of one batch",
    "points_batches.failed_count": "records of one batch",
    "points_batches.latency_ms": "milliseconds of one batch",
    "reward_items.position": "place in a chain of at most a few hundred rewards",
    "referral_rewards.level": "a multi-level payee's level, 0 to 3",
    "reward_items.buckets": "stock sub-buckets, at most 1024",
    "reward_grants.fallbacks": "rewards skipped by one grant, at most its chain's length",
}


def _integer_columns() -> dict[str, str]:
    domains.load()
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return {
        f"{t.name}.{c.name}": str(c.type.compile(dialect=dialect))
        for t in Base.metadata.sorted_tables
        for c in t.columns
        if isinstance(c.type, Integer)
    }


def test_money_points_and_stock_columns_are_bigint() -> None:
    columns = _integer_columns()
    narrow = {name: kind for name, kind in columns.items() if kind != "BIGINT"}
    valued = [n for n in narrow if VALUE_COLUMN.search(n.split(".")[1])]
    assert not valued, f"money, points and stock columns must be BIGINT: {valued}"
    unexplained = sorted(narrow.keys() - SMALL_INTEGERS.keys())
    assert not unexplained, (
        f"INTEGER columns {unexplained}: make them BigInteger, or add each to SMALL_INTEGERS "
        "with what bounds it below 2^31"
    )
    assert not SMALL_INTEGERS.keys() - narrow.keys(), "SMALL_INTEGERS lists a column gone BIGINT"
    assert isinstance(BigInteger(), Integer)  # the walk above also sees BigInteger columns


@pytest.mark.postgres_only
async def test_the_sequence_of_every_bigint_key_is_bigint(db: Database) -> None:
    """An altered serial column keeps its INTEGER sequence unless the migration alters it too."""
    async with db.engine.connect() as conn:
        narrow = (
            await conn.execute(
                text(
                    "SELECT c.table_name || '.' || c.column_name, s.data_type::text "
                    "FROM information_schema.columns c JOIN pg_sequences s "
                    "ON pg_get_serial_sequence(c.table_schema || '.' || c.table_name, "
                    "c.column_name) = s.schemaname || '.' || s.sequencename "
                    "WHERE c.table_schema = 'public' AND c.data_type = 'bigint'"
                    " AND s.data_type::text <> 'bigint'"
                )
            )
        ).all()
    assert narrow == []


def _integers(schema: Any, components: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    """Each request integer without bounds that fit a BIGINT (or an INTEGER column's range)."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _integers(components[name], components, where, seen)
    found = []
    if schema.get("type") == "integer":
        top, bottom = schema.get("maximum"), schema.get("minimum")
        # FastAPI renders a body's bounds as floats: 2^63-1 reads as float(2^63-1) == 2^63.
        highest = float(BIGINT_MAX) if isinstance(top, float) else BIGINT_MAX
        if top is None or top > highest or bottom is None or bottom < -BIGINT_MAX - 1:
            found.append(f"{where}: [{bottom}, {top}]")
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _integers(sub, components, where, seen)
    for name, sub in schema.get("properties", {}).items():
        found += _integers(sub, components, f"{where}.{name}", seen)
    found += _integers(schema.get("items"), components, f"{where}[]", seen)
    found += _integers(schema.get("additionalProperties"), components, f"{where}{{}}", seen)
    return found


def test_every_integer_the_api_accepts_is_bounded_within_bigint(app: Any) -> None:
    document = app.openapi()
    components = document["components"]["schemas"]
    found: list[str] = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                found += _integers(p["schema"], components, f"{method} {path} {p['name']}", set())
            for media in op.get("requestBody", {}).get("content", {}).values():
                found += _integers(media["schema"], components, f"{method} {path} body", set())
    assert not found, "integers without a maximum/minimum inside BIGINT:\n" + "\n".join(found)


# ------------------------------------------------------------------ the limits, end to end

NOW = datetime.now(UTC)
SALE = {
    "name": "Big sale",
    "sku": "BIG-1",
    "item_name": "Gold bar",
    "starts_at": (NOW - timedelta(hours=1)).isoformat(),
    "ends_at": (NOW + timedelta(days=1)).isoformat(),
}


async def _rows(db: Database) -> dict[str, int]:
    async with db.unit_of_work() as s:
        return {
            t.name: int((await s.execute(select(func.count()).select_from(t))).scalar_one())
            for t in Base.metadata.sorted_tables
        }


@pytest.fixture
async def staff(db: Database, app: Any) -> Actor:
    merchant = await make_merchant(db, code="BIG")
    return await make_user(db, app, username="bigstaff", role="merchant", merchant_id=merchant.id)


@pytest.mark.parametrize(
    ("field", "largest"),
    [("price_fen", MAX_FEN), ("total_stock", MAX_COUNT), ("price_fen", INT_MAX + 1)],
)
async def test_the_largest_sale_values_are_kept_and_one_more_is_refused(
    db: Database, client: httpx.AsyncClient, staff: Actor, field: str, largest: int
) -> None:
    body = {**SALE, "price_fen": 990, "total_stock": 10, field: largest}
    r = await client.post("/api/v1/flash-sales", json=body, headers=staff.headers)
    assert r.status_code == 201, r.text
    sale = r.json()
    read = await client.get(f"/api/v1/flash-sales/{sale['id']}", headers=staff.headers)
    assert read.status_code == 200, read.text
    assert read.json()["price_fen" if field == "price_fen" else "total"] == largest
    r = await client.get(f"/api/v1/campaigns/{sale['id']}", headers=staff.headers)
    assert r.json()["rules"][field] == largest

    if largest in (MAX_FEN, MAX_COUNT):
        before = await _rows(db)
        body[field] = largest + 1
        r = await client.post("/api/v1/flash-sales", json=body, headers=staff.headers)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field
        assert await _rows(db) == before


async def test_the_largest_transfer_is_kept_exactly_and_one_more_is_refused(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="bigop", role="operator")
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        holder = await ledger.open_account(s, owner_type="platform", owner_id="h", asset="POINTS")
    body = {
        "debit_account_id": issuer.id,
        "credit_account_id": holder.id,
        "amount": ledger.MAX_AMOUNT,
        "kind": "grant",
    }
    r = await client.post(
        "/api/v1/transfers", json=body, headers={**op.headers, "Idempotency-Key": "max"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == ledger.MAX_AMOUNT
    async with db.unit_of_work() as s:
        assert (await ledger.get_account(s, holder.id)).balance == ledger.MAX_AMOUNT
        assert (await ledger.get_account(s, issuer.id)).balance == -ledger.MAX_AMOUNT
    before = await _rows(db)
    body["amount"] = ledger.MAX_AMOUNT + 1
    r = await client.post(
        "/api/v1/transfers", json=body, headers={**op.headers, "Idempotency-Key": "max+1"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "amount"
    assert await _rows(db) == before


async def test_the_largest_ids_and_versions_are_answered_and_one_more_is_refused(
    db: Database, app: Any, client: httpx.AsyncClient, staff: Actor
) -> None:
    """Each bound meets the database: the largest accepted value gets a business answer (never
    a 5xx from a driver that cannot bind it), one more is a 422 naming the field."""
    op = await make_user(db, app, username="bigop2", role="operator")
    r = await client.post(
        "/api/v1/campaigns",
        json={
            "kind": "referral",
            "name": "Invite",
            "rules": {"referrer_reward_points": 1, "max_referrals_per_user": 1},
            "starts_at": SALE["starts_at"],
            "ends_at": SALE["ends_at"],
        },
        headers=staff.headers,
    )
    assert r.status_code == 201, r.text
    campaign = r.json()["id"]
    cases: list[tuple[str, str, dict[str, Any] | None, str, int, int]] = [
        ("PATCH", f"/api/v1/campaigns/{campaign}", {"name": "x"}, "version", INT_MAX, 409),
        (
            "POST",
            f"/api/v1/campaigns/{campaign}/transitions",
            {"to": "pending_review"},
            "version",
            INT_MAX,
            409,
        ),
        (
            "POST",
            f"/api/v1/campaigns/{campaign}/budget",
            {"amount": 1},
            "from_account_id",
            BIGINT_MAX,
            404,
        ),
        (
            "POST",
            f"/api/v1/campaigns/{campaign}/budget",
            {"from_account_id": BIGINT_MAX},
            "amount",
            ledger.MAX_AMOUNT,
            404,
        ),
        ("PUT", "/api/v1/config/flash_sale.buckets", {"value": 8}, "expected_version", 2**62, 409),
        ("GET", f"/api/v1/accounts/{BIGINT_MAX}", None, "account_id", BIGINT_MAX, 404),
    ]
    before = await _rows(db)
    for method, path, body, field, largest, answer in cases:
        actor = staff if "campaigns" in path and "budget" not in path else op
        headers = {**actor.headers, "Idempotency-Key": f"{field}-{largest}"}
        for value, status in ((largest, answer), (largest + 1, 422)):
            if body is None:
                url, payload = path.replace(str(BIGINT_MAX), str(value)), None
            else:
                url, payload = path, {**body, field: value}
            r = await client.request(method, url, json=payload, headers=headers)
            assert r.status_code == status, (method, url, field, value, r.text)
            if status == 422:
                assert r.json()["errors"][0]["field"] == field, r.text
            headers["Idempotency-Key"] += "+1"
    assert await _rows(db) == before
