"""The request unit of work: commits before the response, converts driver errors to 4xx/503."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter
from sqlalchemy import func, select

from incentive.auth.models import Merchant
from incentive.db import Database
from incentive.deps import Session
from incentive.ledger import service as ledger


async def test_commit_failure_is_a_conflict_not_a_500_and_writes_nothing(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    router = APIRouter()

    @router.post("/_test/merchants/{code}")
    async def create(code: str, session: Session) -> dict[str, bool]:
        session.add(Merchant(code=code, name="first"))
        session.add(Merchant(code=f"{code}-2", name="second"))
        return {"ok": True}

    app.include_router(router)
    assert (await client.post("/_test/merchants/A")).status_code == 200
    # The second call's first insert collides only at commit time (after the endpoint returned).
    r = await client.post("/_test/merchants/A")
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    async with db.unit_of_work() as s:
        count = await s.scalar(select(func.count()).select_from(Merchant))
    assert count == 2


async def test_error_responses_are_problem_json_with_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/does-not-exist", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["status"] == 404


async def test_metrics_exposes_request_counts(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert 'incentive_http_requests_total{method="GET",route="/healthz",status="200"}' in r.text


async def test_metrics_count_domain_events(client: httpx.AsyncClient, db: Database) -> None:
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="m", asset="POINTS", allow_negative=True
        )
        holder = await ledger.open_account(s, owner_type="user", owner_id="m", asset="POINTS")
        await ledger.transfer(
            s,
            idempotency_key="metrics-1",
            debit_account_id=issuer.id,
            credit_account_id=holder.id,
            amount=5,
            kind="test",
        )
    await client.get("/api/v1/me")  # no token
    await client.post("/api/v1/auth/token", json={"username": "nobody", "password": "x" * 10})
    text = (await client.get("/metrics")).text
    assert 'incentive_auth_rejected_credentials_total{kind="bearer"}' in text
    assert 'incentive_auth_logins_total{outcome="invalid"}' in text
    assert 'incentive_ledger_transfers_total{asset="POINTS",mode="single"}' in text
