"""Ledger throughput: batch transfers in-engine and single transfers over HTTP.

Prints one JSON document. For each engine (SQLite file; PostgreSQL at
``INCENTIVE_BENCH_DATABASE_URL``, default postgresql+asyncpg://postgres@127.0.0.1/incentive_bench,
created and dropped by this script):

- ``batch``: ``ledger.service.batch_transfer`` of ``--batch-size`` items per unit of work,
  ``--batches`` times, between ``--accounts`` funded accounts (transfers/s incl. commit).
- ``http``: a real ``incentive serve`` process on loopback; an httpx client with
  ``--concurrency`` requests in flight posts single transfers (each with its own
  Idempotency-Key, operator token), then hits ``GET /healthz`` of the same server for the
  bare-endpoint figure; ``ratio`` = bare rps / transfer rps.

Usage: python bench/ledger.py [--engines sqlite,postgresql] [--http-requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.auth.keyring import KeyRing
from incentive.auth.models import User
from incentive.auth.tokens import issue_access_token
from incentive.db import Database
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger import service as ledger

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench"


async def _prepare(url: str, accounts: int) -> tuple[int, list[int]]:
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
    await db.dispose()
    return issuer.id, ids


async def bench_batch(url: str, ids: list[int], batch_size: int, batches: int) -> dict[str, Any]:
    db = Database(url)
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
    durations = []
    for items in plans:
        start = time.perf_counter()
        async with db.unit_of_work() as s:
            result = await ledger.batch_transfer(s, items)
        durations.append(time.perf_counter() - start)
        assert result.created == len(items)
    await db.dispose()
    total = batch_size * batches
    return {
        "batch_size": batch_size,
        "batches": batches,
        "transfers": total,
        "seconds": round(sum(durations), 3),
        "transfers_per_s": round(total / sum(durations)),
        "best_batch_transfers_per_s": round(batch_size / min(durations)),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def _drive(base: str, n: int, concurrency: int, make: Any) -> tuple[float, dict[int, int]]:
    # One keep-alive connection per worker: httpx's shared pool is itself the bottleneck
    # (sub-1k rps) once dozens of requests wait on it.
    statuses: dict[int, int] = {}
    counter = iter(range(n))
    clients = [
        httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=1))
        for _ in range(concurrency)
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            r = await make(client, i)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    try:
        for c in clients:
            await c.get("/healthz")
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        return time.perf_counter() - start, statuses
    finally:
        for c in clients:
            await c.aclose()


async def bench_http(
    url: str, issuer: int, ids: list[int], requests: int, concurrency: int, workers: int
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-"))
    token = await _operator_token(url, data_dir)
    port = _free_port()
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(data_dir),
        "INCENTIVE_DATABASE_URL": url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "WARNING",
    }
    log = (data_dir / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    rnd = random.Random(11)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            for _ in range(200):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

            async def transfer(c: httpx.AsyncClient, i: int) -> httpx.Response:
                debit, credit = rnd.sample(ids, 2)
                body = {
                    "debit_account_id": debit,
                    "credit_account_id": credit,
                    "amount": 1 + i % 500,
                    "kind": "bench",
                }
                return await c.post(
                    "/api/v1/transfers",
                    json=body,
                    headers={**headers, "Idempotency-Key": f"http-{i}"},
                )

            async def bare(c: httpx.AsyncClient, i: int) -> httpx.Response:
                return await c.get("/healthz")

        await _drive(base, 200, concurrency, bare)  # warm-up
        t_seconds, t_status = await _drive(base, requests, concurrency, transfer)
        b_seconds, b_status = await _drive(base, requests, concurrency, bare)
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
    t_rps = requests / t_seconds
    b_rps = requests / b_seconds
    return {
        "server_workers": workers,
        "concurrency": concurrency,
        "requests": requests,
        "transfer_rps": round(t_rps),
        "transfer_statuses": t_status,
        "bare_rps": round(b_rps),
        "bare_statuses": b_status,
        "bare_over_transfer": round(b_rps / t_rps, 2),
    }


async def run_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    if engine == "sqlite":
        url = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    else:
        url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
        name = make_url(url).database
        await recreate_database(url, str(name))
    try:
        issuer, ids = await _prepare(url, args.accounts)
        result: dict[str, Any] = {
            "batch": await bench_batch(url, ids, args.batch_size, args.batches)
        }
        result["http"] = await bench_http(
            url, issuer, ids, args.http_requests, args.concurrency, args.workers
        )
        return result
    finally:
        if engine != "sqlite":
            await drop_database(url, str(name))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--http-requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
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
