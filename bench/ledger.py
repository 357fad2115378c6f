"""Ledger throughput: batch transfers against a bare COPY, and single transfers over HTTP.

Prints one JSON document. For each engine (SQLite file; PostgreSQL at
``INCENTIVE_BENCH_DATABASE_URL``, default postgresql+asyncpg://postgres@127.0.0.1/incentive_bench,
created and dropped by this script; Redis for the server at ``INCENTIVE_BENCH_REDIS_URL`` if set):

- ``batch``: ``ledger.service.batch_transfer`` of ``--batch-size`` items per unit of work,
  ``--batches`` times, between ``--accounts`` funded accounts (transfers/s incl. commit). On
  PostgreSQL each batch is followed by a bare COPY of the same rows (other keys) into
  ``transfers`` (asyncpg ``copy_records_to_table``, real indexes), and ``batch_over_bare_copy``
  is the batch rate over the COPY rate, measured side by side in the same run.
- ``http``: a real ``incentive serve`` (``bench/httpbench.py``) driven by ``wrk`` posting one
  fixed transfer body (from the issuer account, which may go negative, to one account) with an
  operator token and a fresh ``Idempotency-Key`` per request; then ``GET /healthz`` on the same
  server. Rate, p99 and server CPU ms per request for both, and the outcome checked from the
  database: transfers committed against 201s acknowledged, balances summing to zero.

Usage: python bench/ledger.py [--engines sqlite,postgresql] [--parts batch,http] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from httpbench import Server
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.auth.keyring import KeyRing
from incentive.auth.models import User
from incentive.auth.tokens import issue_access_token
from incentive.db import Database
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger import service as ledger
from incentive.ledger.models import TRANSFER_COLUMNS, Account, Transfer

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench"


async def _prepare(url: str, accounts: int) -> tuple[int, list[int], int]:
    """The issuer (may go negative), ``accounts`` funded accounts, and an empty account that
    only the HTTP transfers credit."""
    db = Database(url)
    await migrations.upgrade(db.engine)
    async with db.unit_of_work() as s:
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        ids = [
            (await ledger.open_account(s, owner_type="user", owner_id=f"b{n}", asset="POINTS")).id
            for n in range(accounts)
        ]
        await ledger.batch_transfer(
            s, [ledger.TransferItem(f"seed-{i}", issuer.id, i, 10**12, "funding") for i in ids]
        )
        sink = await ledger.open_account(s, owner_type="user", owner_id="sink", asset="POINTS")
    await db.dispose()
    return issuer.id, ids, sink.id


def _plans(ids: list[int], batch_size: int, batches: int) -> list[list[ledger.TransferItem]]:
    rnd = random.Random(7)
    plans = []
    for b in range(batches):
        items = []
        for i in range(batch_size):
            debit, credit = rnd.sample(ids, 2)
            items.append(
                ledger.TransferItem(f"batch-{b}-{i}", debit, credit, rnd.randint(1, 1000), "move")
            )
        plans.append(items)
    return plans


async def _bare_copy(url: str, items: list[ledger.TransferItem]) -> float:
    """Seconds to COPY the same rows (other keys) into ``transfers`` in one transaction, with
    its real indexes and constraints: the database's own floor for writing these rows."""
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    now = datetime.now(UTC)
    records = [
        ("copy-" + i.idempotency_key, i.debit_account_id, i.credit_account_id, i.amount)
        + ("POINTS", i.kind, i.reference, "{}", now)
        for i in items
    ]
    try:
        start = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("transfers", records=records, columns=TRANSFER_COLUMNS)
        return time.perf_counter() - start
    finally:
        await conn.close()


async def bench_batch(url: str, ids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """``batch_transfer`` per unit of work; on PostgreSQL each batch is followed by a bare COPY
    of the same rows into ``transfers``, so both see the same table size and the same load."""
    db = Database(url)
    postgres = db.engine.dialect.name == "postgresql"
    durations, copies = [], []
    for items in _plans(ids, args.batch_size, args.batches):
        start = time.perf_counter()
        async with db.unit_of_work() as s:
            result = await ledger.batch_transfer(s, items)
        durations.append(time.perf_counter() - start)
        assert result.created == len(items)
        if postgres:
            copies.append(await _bare_copy(url, items))
    await db.dispose()
    total = args.batch_size * args.batches
    figures: dict[str, Any] = {
        "batch_size": args.batch_size,
        "batches": args.batches,
        "transfers": total,
        "seconds": round(sum(durations), 3),
        "transfers_per_s": round(total / sum(durations)),
        "best_batch_transfers_per_s": round(args.batch_size / min(durations)),
    }
    if copies:
        figures["bare_copy_rows_per_s"] = round(total / sum(copies))
        figures["batch_over_bare_copy"] = round(sum(copies) / sum(durations), 3)
        figures["targets"] = {
            "batch_at_least_0.7_of_bare_copy": sum(copies) / sum(durations) >= 0.7
        }
    return figures


async def _operator_token(url: str, data_dir: Path) -> str:
    db = Database(url)
    async with db.unit_of_work() as s:
        user = User(
            username="bench-operator",
            display_name="bench",
            password_hash=PasswordHasher(time_cost=1, memory_cost=8192).hash("x" * 16),
            role="operator",
        )
        s.add(user)
        await s.flush()
    await db.dispose()
    token, _ = issue_access_token(
        KeyRing.load(data_dir / "keys"),
        user_id=user.id,
        name=user.username,
        role="operator",
        merchant_id=None,
        ttl_seconds=3600,
    )
    return token


async def _http_outcome(url: str, credit: int) -> tuple[int, int, int]:
    """(transfers into ``credit`` from the HTTP runs, its balance, sum of every balance)."""
    db = Database(url)
    async with db.unit_of_work() as s:
        count = await s.scalar(
            select(func.count()).where(
                Transfer.credit_account_id == credit, Transfer.kind == "bench"
            )
        )
        balance = await s.scalar(select(Account.balance).where(Account.id == credit))
        total = await s.scalar(select(func.coalesce(func.sum(Account.balance), 0)))
    await db.dispose()
    return int(count or 0), int(balance or 0), int(total or 0)


def _py_spy(server: Server, out: str | None, seconds: int) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of the server during the measured run (``--py-spy out.txt``)."""
    if not out:
        return None
    command = ["py-spy", "record", "-p", str(server.proc.pid), "-f", "raw", "-o", out]
    command += ["-d", str(max(seconds - 2, 1)), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _settled(url: str, credit: int) -> int:
    """The HTTP transfers committed once the requests wrk left in flight have finished."""
    last = -1
    while True:
        await asyncio.sleep(1)
        count, _, _ = await _http_outcome(url, credit)
        if count == last:
            return count
        last = count


async def bench_http(
    url: str, issuer: int, credit: int, args: argparse.Namespace, redis_url: str | None
) -> dict[str, Any]:
    """Single transfers over HTTP with wrk: one fixed body valid for every request (from the
    issuer, which may go negative, to one account), a fresh Idempotency-Key per request."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not on PATH (apt-get install wrk)"}
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-"))
    token = await _operator_token(url, data_dir)
    env = {
        "INCENTIVE_DATA_DIR": str(data_dir),
        "INCENTIVE_DATABASE_URL": url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "WARNING",
    }
    if redis_url:
        env["INCENTIVE_REDIS_URL"] = redis_url
    amount = 7
    body = json.dumps(
        {"debit_account_id": issuer, "credit_account_id": credit, "amount": amount, "kind": "bench"}
    )
    post = {"tokens": [token], "method": "POST", "body": body, "connections": args.concurrency}
    seconds = args.seconds
    server = Server(env, workers=args.workers, log=data_dir / "server.log")
    try:
        server.wrk("/healthz", seconds=2, connections=args.concurrency)  # warm-up
        server.wrk("/api/v1/transfers", seconds=2, **post)
        before = await _settled(url, credit)
        profiler = _py_spy(server, args.py_spy, seconds)
        transfers = server.wrk("/api/v1/transfers", seconds=seconds, **post)
        if profiler is not None:
            profiler.wait()
        after = await _settled(url, credit)
        _, balance, total = await _http_outcome(url, credit)
        bare = server.wrk("/healthz", seconds=seconds, connections=args.concurrency)
    finally:
        server.stop()
        errors_logged = server.errors_logged()
        if errors_logged:
            sys.stderr.write(f"server errors logged: see {server.log}\n")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    committed = after - before
    # A request cut off by wrk's stop may commit without its 201 being read: committed may
    # exceed acknowledged by at most the connections in flight, never fall short of it.
    unread = committed - transfers["ok"]
    return {
        "server": f"incentive serve, {args.workers} uvicorn worker(s)",
        "load": f"wrk -t2 -c{args.concurrency} -d{seconds}s",
        "transfers": transfers,
        "bare_healthz": bare,
        "bare_over_transfer": round(bare["rps"] / max(transfers["rps"], 1), 2),
        "server_errors_logged": errors_logged,
        "outcome": {
            "acknowledged_201": transfers["ok"],
            "committed": committed,
            "committed_minus_acknowledged": unread,
            "acknowledged_all_committed": 0 <= unread <= args.concurrency,
            "credit_balance_equals_committed_amounts": balance == amount * after,
            "balances_sum_to_zero": total == 0,
        },
        "targets": {"transfer_server_cpu_ms_at_most_2": transfers["server_cpu_ms"] <= 2},
    }


async def run_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    redis_url = None
    if engine == "sqlite":
        url = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    else:
        url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
        redis_url = os.environ.get("INCENTIVE_BENCH_REDIS_URL")
        name = make_url(url).database
        await recreate_database(url, str(name))
    try:
        issuer, ids, sink = await _prepare(url, args.accounts)
        result: dict[str, Any] = {}
        if "batch" in args.parts:
            result["batch"] = await bench_batch(url, ids, args)
        if "http" in args.parts:
            result["http"] = await bench_http(url, issuer, sink, args, redis_url)
        return result
    finally:
        if engine != "sqlite":
            await drop_database(url, str(name))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--parts", default="batch,http")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--py-spy", help="write a py-spy raw profile of the transfer run here")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "bench": "ledger",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "engines": {},
    }
    for engine in args.engines.split(","):
        report["engines"][engine] = await run_engine(engine.strip(), args)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
