"""The request unit of work: commits before the response, converts driver errors to 4xx/503."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select

from incentive.auth.models import Merchant
from incentive.db import Database
from incentive.deps import Session
from incentive.ledger import service as ledger
from incentive.settings import Settings


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


METRICS_TOKEN = "test-metrics-token"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)})


async def _samples(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[Any]], float]:
    """Every sample of /metrics by (name, labels): series live for the whole process, so a
    test compares values before and after instead of looking for a series' presence."""
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def _grew(
    before: dict[tuple[str, frozenset[Any]], float],
    after: dict[tuple[str, frozenset[Any]], float],
    name: str,
    **labels: str,
) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_expose_request_counts(client: httpx.AsyncClient) -> None:
    before = await _samples(client)
    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    after = await _samples(client)
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    assert _grew(before, after, "incentive_http_requests_total", **labels) == 3


async def test_metrics_count_domain_events(client: httpx.AsyncClient, db: Database) -> None:
    before = await _samples(client)
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
    after = await _samples(client)
    assert _grew(before, after, "incentive_auth_rejected_credentials_total", kind="bearer") == 1
    assert _grew(before, after, "incentive_auth_logins_total", outcome="invalid") == 1
    assert (
        _grew(before, after, "incentive_ledger_transfers_total", asset="POINTS", mode="single") == 1
    )
