"""Activities, rebates and join codes on PostgreSQL: prints one JSON document.

Parts (``--parts``, comma-separated; one function ``part_<name>`` each):

- ``codes``: an operator generates ``--codes`` join codes (default 1,000,000) for one
  campaign with one ``POST /api/v1/campaigns/{id}/join-codes`` against a real
  ``incentive serve`` (timed from the request to its 201: generation, COPY, unique checks,
  commit), then downloads them with the streamed CSV export (timed to the last byte). The
  rows and lines are counted afterwards. Target (issue 12): 1,000,000 codes in <= 20 s.

- ``http``: activities over HTTP, side by side with a single ledger transfer on the same
  server: one real ``incentive serve`` on PostgreSQL (+ Redis when
  ``INCENTIVE_BENCH_REDIS_URL`` is set), driven by ``wrk``:

  - ``transfer``: ``POST /api/v1/transfers``, one fixed body (issuer → one account), the
    reference line of the issue's target (a rebated payment costs <= 1.5x of it);
  - ``payment``: ``POST /api/v1/activities``, one payment per request (a fresh id each) at a
    merchant that joined an active, funded rebate campaign: stored, evaluated inline, the
    customer and the merchant paid in one ledger batch, the 201 carrying the outcome;
  - ``batch_inline`` / ``batch_queued``: ``POST /api/v1/activities/batch`` of ``--batch``
    payments (evaluated inline; or stored and queued with ``Prefer: respond-async``), payments
    per second = batch size x batches/s; then the queued ones' evaluation by the server's
    embedded worker is timed to the last one.

  Every run checks the outcome from the database: each acknowledged payment stored once with
  one outcome, what the outcomes paid is what the ledger moved, the budget never below zero,
  every CNY balance summing to zero. Server CPU per request and per payment beside each rate.

Every run uses a fresh database (``INCENTIVE_BENCH_DATABASE_URL``, default
postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_activities), created and dropped here.

Usage: python bench/activities.py [--parts codes,http] [--codes 1000000] [--seconds 15]
(``INCENTIVE_BENCH_REDIS_URL`` gives the server Redis.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from httpbench import Server, customers_and_operator, merchant_world
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.activities.models import Activity, ActivityOutcome
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.db import Database, utcnow
from incentive.join_codes.models import JoinCode
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger.models import Account, Transfer

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_activities"
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL")
REBATE_RULES = {
    "user_rebate_bp": 200,
    "merchant_rebate_bp": 50,
    "min_payment_fen": 1000,
    "max_rebate_fen": 500,
}


@dataclass
class Run:
    """What every part gets: the database, a running server and an operator's token."""

    url: str
    db: Database
    server: Server
    operator_token: str
    args: argparse.Namespace
    data_dir: Path

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}", **extra}


async def _campaign(db: Database, name: str) -> str:
    operator = Principal(id="bench", name="bench", role="operator")
    now = utcnow()
    async with db.unit_of_work() as s:
        campaign = await campaigns.create_campaign(
            s,
            operator,
            kind="rebate",
            name=name,
            description="bench",
            starts_at=now - timedelta(hours=1),
            ends_at=now + timedelta(days=30),
            rules=REBATE_RULES,
        )
        return campaign.id


async def part_codes(run: Run) -> dict[str, Any]:
    count = run.args.codes
    campaign_id = await _campaign(run.db, "bench join codes")
    async with httpx.AsyncClient(base_url=run.server.base, timeout=600) as client:
        started = time.perf_counter()
        r = await client.post(
            f"/api/v1/campaigns/{campaign_id}/join-codes",
            json={"count": count, "prefix": "BN"},
            headers=run.headers(**{"Idempotency-Key": f"bench-{time.time_ns()}"}),
        )
        generate_s = time.perf_counter() - started
        if r.status_code != 201:
            raise RuntimeError(f"generate answered {r.status_code}: {r.text}")
        lines = size = 0
        started = time.perf_counter()
        async with client.stream(
            "GET", f"/api/v1/campaigns/{campaign_id}/join-codes/export", headers=run.headers()
        ) as streamed:
            if streamed.status_code != 200:
                raise RuntimeError(f"export answered {streamed.status_code}")
            async for piece in streamed.aiter_bytes():
                lines += piece.count(b"\n")
                size += len(piece)
        export_s = time.perf_counter() - started
    async with run.db.unit_of_work() as s:
        rows = await s.scalar(
            select(func.count()).select_from(JoinCode).where(JoinCode.campaign_id == campaign_id)
        )
    return {
        "codes": count,
        "rows_written": int(rows or 0),
        "generate_seconds": round(generate_s, 2),
        "codes_per_second": round(count / generate_s),
        "target_seconds_for_1m": 20,
        "meets_target": count >= 1_000_000 and generate_s <= 20,
        "export_seconds": round(export_s, 2),
        "export_rows": lines - 1,
        "export_megabytes": round(size / 1e6, 1),
        "export_rows_per_second": round((lines - 1) / export_s),
    }


async def _world(url: str, data_dir: Path) -> dict[str, Any]:
    db = Database(url)
    try:
        return await merchant_world(db, data_dir, "rebate")
    finally:
        await db.dispose()


def _auth(token: str, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **({"Idempotency-Key": key} if key else {})}


async def _rebate_campaign(base: str, world: dict[str, Any]) -> dict[str, Any]:
    """Merchant A's rebate campaign (its own: it takes part), reviewed, active, funded."""
    now = datetime.now(UTC)
    rules = {
        "user_rebate_bp": 200,
        "merchant_rebate_bp": 100,
        "min_payment_fen": 100,
        "max_rebate_fen": 100_000,
    }
    staff, op = world["staff"], world["operator"]
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.post(
            "/api/v1/campaigns",
            headers=_auth(staff),
            json={
                "kind": "rebate",
                "name": "bench rebate",
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(days=1)).isoformat(),
                "rules": rules,
            },
        )
        r.raise_for_status()
        campaign: dict[str, Any] = r.json()
        # the automated review approves a clean campaign at submission
        for to, who in (("pending_review", staff), ("active", staff)):
            r = await client.post(
                f"/api/v1/campaigns/{campaign['id']}/transitions",
                headers=_auth(who),
                json={"to": to, "reason": "bench"},
            )
            r.raise_for_status()
        r = await client.post(
            f"/api/v1/campaigns/{campaign['id']}/budget",
            headers=_auth(op, "bench-fund"),
            json={"amount": 10**12, "from_account_id": world["marketing"]},
        )
        r.raise_for_status()
    return campaign


def _payment(world: dict[str, Any], id_: str) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "payment",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": "bench-customer",
        "merchant": world["merchant"],
        "amount_fen": 10_000,
    }


async def _outcome(url: str, campaign: dict[str, Any]) -> dict[str, Any]:
    db = Database(url)
    async with db.unit_of_work() as s:
        payments = int(await s.scalar(select(func.count()).where(Activity.type == "payment")) or 0)
        unevaluated = int(
            await s.scalar(select(func.count()).where(Activity.state == "received")) or 0
        )
        outcomes = int(await s.scalar(select(func.count()).select_from(ActivityOutcome)) or 0)
        rewarded = int(
            await s.scalar(select(func.count()).where(ActivityOutcome.status == "rewarded")) or 0
        )
        moved = int(
            await s.scalar(
                select(func.coalesce(func.sum(Transfer.amount), 0)).where(Transfer.kind == "rebate")
            )
            or 0
        )
        budget = int(
            await s.scalar(
                select(Account.balance).where(Account.id == campaign["budget_account_id"])
            )
            or 0
        )
        total = int(
            await s.scalar(
                select(func.coalesce(func.sum(Account.balance), 0)).where(Account.asset == "CNY")
            )
            or 0
        )
    await db.dispose()
    return {
        "payments_stored": payments,
        "not_evaluated_yet": unevaluated,
        "outcomes": outcomes,
        "rewarded": rewarded,
        "rebate_moved_fen": moved,
        "budget_left_fen": budget,
        "cny_balances_sum": total,
    }


async def _drained(url: str, campaign: dict[str, Any], limit_s: float = 600) -> float:
    """Seconds until no queued activity is left unevaluated."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if (await _outcome(url, campaign))["not_evaluated_yet"] == 0:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def part_http(run: Run) -> dict[str, Any]:
    """Single payments and batches over HTTP beside a single transfer (module docstring)."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not on PATH (apt-get install wrk)"}
    url, server, args = run.url, run.server, run.args
    seconds, concurrency, batch = args.seconds, args.concurrency, args.batch
    world = await _world(url, run.data_dir)
    campaign = await _rebate_campaign(server.base, world)
    op = [world["operator"]]
    transfer_body = json.dumps(
        {
            "debit_account_id": world["marketing"],
            "credit_account_id": world["sink"],
            "amount": 7,
            "kind": "bench",
        }
    )
    one = json.dumps(_payment(world, "@SEQ@"))
    many = json.dumps({"activities": [_payment(world, f"@SEQ@-{i}") for i in range(batch)]})
    post = {"tokens": op, "method": "POST", "connections": concurrency}
    server.wrk("/healthz", seconds=2, connections=concurrency)  # warm-up
    server.wrk("/api/v1/transfers", seconds=2, body=transfer_body, **post)
    server.wrk("/api/v1/activities", seconds=2, body=one, **post)
    result: dict[str, Any] = {
        "server": "incentive serve, 1 uvicorn worker, PostgreSQL"
        + (" + Redis" if REDIS_URL else ""),
        "load": f"wrk -c{concurrency} -d{seconds}s (batches: -c2)",
    }
    result["transfer"] = server.wrk(
        "/api/v1/transfers", seconds=seconds, body=transfer_body, **post
    )
    result["payment"] = server.wrk("/api/v1/activities", seconds=seconds, body=one, **post)
    batch_post = {**post, "connections": 2}
    inline = server.wrk("/api/v1/activities/batch", seconds=seconds, body=many, **batch_post)
    inline["payments_per_s"] = round(inline["rps"] * batch)
    inline["server_cpu_ms_per_payment"] = round(inline["server_cpu_ms"] / batch, 3)
    result["batch_inline"] = inline
    queued = server.wrk(
        "/api/v1/activities/batch",
        seconds=seconds,
        body=many,
        headers={"Prefer": "respond-async"},
        **batch_post,
    )
    queued["payments_per_s"] = round(queued["rps"] * batch)
    queued["server_cpu_ms_per_payment"] = round(queued["server_cpu_ms"] / batch, 3)
    backlog = queued["ok"] * batch
    queued["evaluation_drain_s"] = round(await _drained(url, campaign), 1)
    queued["evaluated_per_s_after"] = round(backlog / max(queued["evaluation_drain_s"], 0.1))
    result["batch_queued"] = queued
    outcome = await _outcome(url, campaign)
    errors = server.errors_logged()
    ratio = result["payment"]["server_cpu_ms"] / max(result["transfer"]["server_cpu_ms"], 1e-9)
    result["payment_cpu_over_transfer_cpu"] = round(ratio, 2)
    result["server_errors_logged"] = errors
    result["outcome"] = {
        **outcome,
        "every_payment_one_outcome": outcome["outcomes"] == outcome["payments_stored"],
        "outcomes_paid_what_the_ledger_moved": outcome["rebate_moved_fen"]
        == outcome["rewarded"] * 300,
        "budget_not_negative": outcome["budget_left_fen"] >= 0,
        "ledger_conserved": outcome["cny_balances_sum"] == 0,
    }
    result["targets"] = {
        "payment_cpu_at_most_1_5x_transfer": ratio <= 1.5,
        "batch_ingestion_at_least_10000_per_s": result["batch_queued"]["payments_per_s"] >= 10_000,
    }
    return result


PARTS: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]] = {
    "codes": part_codes,
    "http": part_http,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {sorted(PARTS)}")
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=15, help="http: each wrk run")
    parser.add_argument("--concurrency", type=int, default=200, help="http: connections")
    parser.add_argument("--batch", type=int, default=1000, help="http: payments per batch")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - PARTS.keys())
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {sorted(PARTS)}")
    url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
    name = str(make_url(url).database)
    await recreate_database(url, name)
    db = Database(url)
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-"))
    report: dict[str, Any] = {
        "bench": "activities",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "database": "postgresql",
        "parts": {},
    }
    try:
        await migrations.upgrade(db.engine)
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": "WARNING",
        }
        if REDIS_URL:
            env["INCENTIVE_REDIS_URL"] = REDIS_URL
        with Server(env, log=data_dir / "server.log") as server:
            _, operator = await customers_and_operator(db, data_dir / "keys", 0)
            run = Run(url, db, server, operator, args, data_dir)
            for part in parts:
                report["parts"][part] = await PARTS[part](run)
    finally:
        await db.dispose()
        await drop_database(url, name)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
