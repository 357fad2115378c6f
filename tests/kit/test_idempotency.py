"""Idempotency-Key handling, on a route of its own and on the ledger's transfer endpoint."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import func, select

from incentive.auth.audit import record_idempotent_call
from incentive.auth.models import AuditEntry
from incentive.auth.principal import CurrentUser, current_user
from incentive.db import Database, utcnow
from incentive.deps import Session
from incentive.errors import Conflict
from incentive.kit import idempotency
from incentive.kit.idempotency import (
    Claim,
    IdempotencyRecord,
    claim_dependency,
    fingerprint,
    idempotent,
    on_complete,
    purge_records,
    use_default_caller,
)
from incentive.ledger import service as ledger
from incentive.ledger.models import Transfer
from tests.factories import make_user
from tests.servers import running_server

IdempotencyClaim = Annotated[Claim, Depends(claim_dependency())]


class Payload(BaseModel):
    n: int


class Result(BaseModel):
    run: int
    n: int
    key: str


def _mount(app: Any) -> list[int]:
    """A test-only router whose side effect (the `runs` list) lives outside the database."""
    runs: list[int] = []
    router = APIRouter()

    @router.post("/test/echo", response_model=Result, status_code=202)
    @idempotent(status_code=202)
    async def echo(body: Payload, caller: CurrentUser, session: Session, claim: Claim) -> Result:
        runs.append(body.n)
        if body.n < 0:
            raise Conflict("negative n refused")
        await asyncio.sleep(0.05)  # keeps concurrent duplicates overlapping
        return Result(run=len(runs), n=body.n, key=claim.key)

    @router.post("/test/echo/{tag}", response_model=Result)
    @idempotent()
    async def echo_tagged(tag: str, body: Payload, caller: CurrentUser) -> Result:
        runs.append(body.n)
        return Result(run=len(runs), n=body.n, key=tag)

    @router.post("/test/manual", response_model=Result)
    async def manual(body: Payload, claim: IdempotencyClaim) -> Any:
        if claim.is_replay:
            return claim.replayed_response()
        runs.append(body.n)
        result = Result(run=len(runs), n=body.n, key=claim.key).model_dump()
        await claim.complete(200, result)
        return result

    app.include_router(router)
    return runs


def _hk(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def test_replay_returns_first_response_without_running_again(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    r1 = await client.post("/test/echo", json={"n": 1}, headers=_hk(u.headers, "a"))
    r2 = await client.post("/test/echo", json={"n": 1}, headers=_hk(u.headers, "a"))
    assert r1.status_code == r2.status_code == 202
    assert r1.json() == r2.json() == {"run": 1, "n": 1, "key": "a"}
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in r1.headers
    assert runs == [1]
    # Audited once, with the caller, the call, the key and the request id; not on replay.
    async with db.unit_of_work() as s:
        entries = (await s.execute(select(AuditEntry))).scalars().all()
    assert [(e.actor_id, e.action, e.detail) for e in entries] == [
        (u.user.id, "POST /test/echo", {"idempotency_key": "a", "status": 202})
    ]
    assert entries[0].request_id == r1.headers["x-request-id"]


async def test_same_key_other_body_or_path_is_409(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    await client.post("/test/echo", json={"n": 1}, headers=_hk(u.headers, "a"))
    for path, body in (("/test/echo", {"n": 2}), ("/test/echo/x", {"n": 1})):
        r = await client.post(path, json=body, headers=_hk(u.headers, "a"))
        assert r.status_code == 409, path
        assert r.json()["type"].endswith("/idempotency-key-reused")
        assert r.json()["header"] == "Idempotency-Key"
    assert runs == [1]


async def test_keys_are_scoped_by_caller(db: Database, app: Any, client: httpx.AsyncClient) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    v = await make_user(db, app, username="v")
    r1 = await client.post("/test/echo", json={"n": 1}, headers=_hk(u.headers, "same"))
    r2 = await client.post("/test/echo", json={"n": 1}, headers=_hk(v.headers, "same"))
    assert r1.json()["run"] == 1
    assert r2.json()["run"] == 2
    assert "Idempotent-Replayed" not in r2.headers
    assert runs == [1, 1]


async def test_failed_request_is_not_stored_and_can_be_retried(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    r = await client.post("/test/echo", json={"n": -1}, headers=_hk(u.headers, "f"))
    assert r.status_code == 409
    async with db.unit_of_work() as s:
        count = (await s.execute(select(func.count()).select_from(IdempotencyRecord))).scalar()
        audited = (await s.execute(select(func.count()).select_from(AuditEntry))).scalar()
    assert count == 0
    assert audited == 0
    r = await client.post("/test/echo", json={"n": -1}, headers=_hk(u.headers, "f"))
    assert r.status_code == 409
    assert runs == [-1, -1]


async def test_header_missing_or_invalid_is_422_naming_it(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    r = await client.post("/test/echo", json={"n": 1}, headers=u.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0] == {
        "field": "Idempotency-Key",
        "in": "header",
        "rule": "missing",
        "message": "Field required",
    }
    r = await client.post("/test/echo", json={"n": 1}, headers=_hk(u.headers, "k" * 201))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"
    assert runs == []


async def test_dependency_style_usage(db: Database, app: Any, client: httpx.AsyncClient) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    r1 = await client.post("/test/manual", json={"n": 5}, headers=_hk(u.headers, "m"))
    r2 = await client.post("/test/manual", json={"n": 5}, headers=_hk(u.headers, "m"))
    assert r1.json() == r2.json()
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert runs == [5]


async def test_concurrent_duplicates_run_once(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    runs = _mount(app)
    u = await make_user(db, app, username="u")
    responses = await asyncio.gather(
        *(client.post("/test/echo", json={"n": 7}, headers=_hk(u.headers, "c")) for _ in range(8))
    )
    assert runs == [7]
    assert {r.status_code for r in responses} == {202}
    assert all(r.json() == responses[0].json() for r in responses)
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7


async def test_concurrent_duplicate_transfers_move_value_once(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    async with db.unit_of_work() as s:
        src = await ledger.open_account(
            s, owner_type="platform", owner_id="p", asset="POINTS", allow_negative=True
        )
        dst = await ledger.open_account(s, owner_type="user", owner_id="u", asset="POINTS")
    body = {"debit_account_id": src.id, "credit_account_id": dst.id, "amount": 9, "kind": "x"}
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/transfers", json=body, headers=_hk(op.headers, "dup"))
            for _ in range(10)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    async with db.unit_of_work() as s:
        assert (await ledger.get_account(s, dst.id)).balance == 9
        assert (await s.execute(select(func.count()).select_from(Transfer))).scalar() == 1


def test_fingerprint_separates_parts() -> None:
    assert fingerprint("post", "/a", b"{}") == fingerprint("POST", "/a", b"{}")
    assert fingerprint("POST", "/a", b"b{}") != fingerprint("POST", "/ab", b"{}")
    assert fingerprint("POST", "/a", b"{}") != fingerprint("PUT", "/a", b"{}")


async def test_purge_forgets_old_records(db: Database, app: Any, client: httpx.AsyncClient) -> None:
    _mount(app)
    u = await make_user(db, app, username="u")
    await client.post("/test/echo", json={"n": 1}, headers=_hk(u.headers, "old"))
    async with db.unit_of_work() as s:
        assert await purge_records(s, older_than=utcnow() - timedelta(hours=1)) == 0
        assert await purge_records(s, older_than=utcnow() + timedelta(seconds=1)) == 1


@pytest.mark.postgres_only
async def test_duplicate_waits_on_the_first_transaction(db: Database) -> None:
    """The second claim blocks on the unique index until the first commits, then replays."""
    from incentive.kit.idempotency import claim_key

    order: list[str] = []
    first_claimed = asyncio.Event()

    async def first() -> None:
        async with db.unit_of_work() as s:
            claim = await claim_key(s, scope="t:1", key="k", request_fingerprint="f")
            first_claimed.set()
            await asyncio.sleep(0.3)
            await claim.complete(201, {"done": True})
            order.append("first-commit")

    async def second() -> Claim:
        await first_claimed.wait()
        async with db.unit_of_work() as s:
            claim = await claim_key(s, scope="t:1", key="k", request_fingerprint="f")
            order.append("second-claimed")
            return claim

    _, claim = await asyncio.gather(first(), second())
    assert order == ["first-commit", "second-claimed"]
    assert claim.is_replay
    assert claim.replay_body == {"done": True}
    assert claim.replay_status == 201


# --------------------------------------------------------------------------- wiring
# kit imports no domain: auth installs the caller and the audit hook (at import of
# incentive.auth.principal). Without them nothing may run unaudited.


def test_auth_installs_the_caller_and_the_audit_hook() -> None:
    assert idempotency._default_caller is current_user
    assert idempotency._completion_hook is record_idempotent_call
    # Installing the same ones again (a second import path) changes nothing...
    use_default_caller(current_user)
    on_complete(record_idempotent_call)

    # ...another one is refused: two audit hooks would audit a call twice.
    async def other_hook(claim: Claim, status_code: int) -> None:
        return None

    async def other_caller() -> Any:
        return None

    with pytest.raises(RuntimeError, match="installed"):
        on_complete(other_hook)
    with pytest.raises(RuntimeError, match="installed"):
        use_default_caller(other_caller)
    assert idempotency._completion_hook is record_idempotent_call


def test_no_route_is_built_without_the_audit_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency, "_completion_hook", None)

    async def endpoint() -> None:
        return None

    with pytest.raises(RuntimeError, match="unaudited"):
        idempotent(status_code=201)(endpoint)
    with pytest.raises(RuntimeError, match="unaudited"):
        claim_dependency(current_user)


def test_no_route_is_built_without_a_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency, "_default_caller", None)
    with pytest.raises(RuntimeError, match="no default caller"):
        idempotent(status_code=201)
    # A route naming its caller dependency needs no default.
    assert callable(idempotent(status_code=201, principal=current_user))


async def test_a_value_moving_call_without_the_audit_hook_fails_and_moves_nothing(
    db: Database, app: Any, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook gone after start-up: the transfer fails instead of moving value unaudited;
    the key stays free, and the retry once the hook is back moves value and audits once."""
    op = await make_user(db, app, username="op", role="operator")
    async with db.unit_of_work() as s:
        src = await ledger.open_account(
            s, owner_type="platform", owner_id="p", asset="POINTS", allow_negative=True
        )
        dst = await ledger.open_account(s, owner_type="user", owner_id="u", asset="POINTS")
    body = {"debit_account_id": src.id, "credit_account_id": dst.id, "amount": 9, "kind": "x"}

    async def counts() -> tuple[int, int, int, int]:
        async with db.unit_of_work() as s:
            return (
                (await ledger.get_account(s, dst.id)).balance,
                (await s.execute(select(func.count()).select_from(Transfer))).scalar_one(),
                (await s.execute(select(func.count()).select_from(IdempotencyRecord))).scalar_one(),
                (await s.execute(select(func.count()).select_from(AuditEntry))).scalar_one(),
            )

    before = await counts()
    monkeypatch.setattr(idempotency, "_completion_hook", None)
    refused = await client.post("/api/v1/transfers", json=body, headers=_hk(op.headers, "t"))
    assert refused.status_code == 500  # a programming error: answered, logged, nothing moved
    assert refused.json()["type"].endswith("/internal")
    assert await counts() == before == (0, 0, 0, 0)

    monkeypatch.undo()
    r1 = await client.post("/api/v1/transfers", json=body, headers=_hk(op.headers, "t"))
    r2 = await client.post("/api/v1/transfers", json=body, headers=_hk(op.headers, "t"))
    assert (r1.status_code, r2.status_code) == (201, 201)
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert await counts() == (9, 1, 1, 1)
    async with db.unit_of_work() as s:
        entry = (await s.execute(select(AuditEntry))).scalar_one()
    assert (entry.actor_id, entry.actor_role, entry.action, entry.target, entry.detail) == (
        op.user.id,
        "operator",
        "POST /api/v1/transfers",
        "/api/v1/transfers",
        {"idempotency_key": "t", "status": 201},
    )


# --------------------------------------------------------------------------- real servers


async def test_many_concurrent_clients_on_two_servers_get_the_first_answer_on_every_route(
    db: Database, app: Any, data_dir: Path, database_url: str, tmp_path: Path
) -> None:
    """Every value-moving POST using the kit, on two real `incentive serve` processes sharing
    the database: 40 clients at once send one key and one body; all get the first answer,
    with its original status, every copy marked `Idempotent-Replayed: true`; value moves once.
    """
    op = await make_user(db, app, username="op", role="operator")
    async with db.unit_of_work() as s:
        fund = await ledger.open_account(
            s, owner_type="platform", owner_id="p", asset="CNY", allow_negative=True
        )
        dst = await ledger.open_account(s, owner_type="user", owner_id="u", asset="CNY")
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    shutil.copytree(data_dir / "keys", second_dir / "keys")  # both servers verify our tokens
    async with (
        running_server(data_dir, database_url) as one,
        running_server(second_dir, database_url) as two,
        httpx.AsyncClient(timeout=60) as http,
    ):
        now = utcnow()
        sale = {
            "name": "Budgeted",
            "sku": "SKU-1",
            "item_name": "Phone",
            "price_fen": 100,
            "total_stock": 10,
            "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(hours=1)).isoformat(),
        }
        r = await http.post(f"{one.base_url}/api/v1/flash-sales", json=sale, headers=op.headers)
        assert r.status_code == 201, r.text
        campaign = r.json()["id"]
        transfer = {
            "debit_account_id": fund.id,
            "credit_account_id": dst.id,
            "amount": 7,
            "kind": "x",
        }
        batch = {
            "items": [
                {**transfer, "amount": 11, "idempotency_key": "batch-item-1"},
                {**transfer, "amount": 13, "idempotency_key": "batch-item-2"},
            ]
        }
        budget = {"amount": 17, "from_account_id": fund.id}
        routes = [
            ("/api/v1/transfers", transfer, 201),
            ("/api/v1/transfers/batch", batch, 200),
            (f"/api/v1/campaigns/{campaign}/budget", budget, 201),
        ]
        for path, body, status in routes:
            calls = [
                http.post(
                    f"{(one, two)[i % 2].base_url}{path}",
                    json=body,
                    headers=_hk(op.headers, f"one-key:{path}"),
                )
                for i in range(40)
            ]
            responses = await asyncio.gather(*calls)
            answers = Counter((r.status_code, r.json().get("type")) for r in responses)
            assert answers == {(status, None): 40}, (path, answers)
            assert all(r.json() == responses[0].json() for r in responses), path
            replayed = Counter(r.headers.get("Idempotent-Replayed") for r in responses)
            assert replayed == {None: 1, "true": 39}, (path, replayed)
        assert "Traceback" not in one.log() + two.log()
    async with db.unit_of_work() as s:
        assert (await ledger.get_account(s, dst.id)).balance == 7 + 11 + 13
        assert (await s.execute(select(func.count()).select_from(Transfer))).scalar() == 4
        assert (await s.execute(select(func.count()).select_from(AuditEntry))).scalar() == 3
        assert (await s.execute(select(func.count()).select_from(IdempotencyRecord))).scalar() == 3
