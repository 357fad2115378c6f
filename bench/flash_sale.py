"""Stock deduction throughput, every backend side by side, same concurrency, one run.

    python bench/stock_engine.py [--concurrency 200] [--buckets 16]

Each case splits a stock, then ``concurrency`` tasks deduct 1 unit in a loop until sold
out; the figure is units sold per second. Every case then checks that exactly the stock was
sold (oversold = undersold = 0) and no bucket/row is below zero.

Cases: embedded engine; Redis with N buckets and with one key (N=1); Redis Cluster (3
masters) with N buckets; PostgreSQL one hot row (``UPDATE ... SET n = n - q WHERE id = 1 AND
n >= q``) and N rows. Redis servers and the cluster are started here on free loopback ports
(``redis-server`` must be on PATH) unless ``INCENTIVE_BENCH_REDIS_URL`` names a server;
PostgreSQL comes from ``INCENTIVE_BENCH_DATABASE_URL`` (default
postgresql://postgres@127.0.0.1/postgres), in a table of this run's own, dropped at the end.
Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import redis

from incentive.errors import SoldOut
from incentive.stock.engine import StockEngine, stock_engine_from_url

PG_URL = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL")


# --- throwaway Redis servers -------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port(taken: set[int]) -> int:
    while True:  # below 55535 so the cluster bus port (port + 10000) is valid
        port = random.randrange(20000, 30000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            taken.add(port)
            return port


def _start_redis(directory: Path, port: int, cluster: bool) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True)
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log")]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
                client.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start") from None
            time.sleep(0.05)


def _cluster_ok(port: int) -> bool:
    with redis.Redis(port=port) as client:
        info = client.cluster("INFO")
    return bool(info.get("cluster_state") == "ok")


def _create_cluster(ports: list[int]) -> None:
    subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports]]
        + ["--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while not all(_cluster_ok(p) for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("cluster did not reach cluster_state:ok")
        time.sleep(0.1)


# --- the load ----------------------------------------------------------------------------


async def _drain(deduct: Callable[[], Awaitable[bool]], concurrency: int) -> tuple[int, int, float]:
    """``concurrency`` tasks deduct until each is told sold out: (sold, refusals, seconds)."""
    sold = 0
    refusals = 0

    async def worker() -> None:
        nonlocal sold, refusals
        while True:
            if await deduct():
                sold += 1
            else:
                refusals += 1
                return

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sold, refusals, time.perf_counter() - started


def _result(
    case: str, buckets: int, stock: int, drained: tuple[int, int, float], levels: list[int]
) -> dict[str, Any]:
    sold, refusals, seconds = drained
    return {
        "case": case,
        "buckets": buckets,
        "stock": stock,
        "sold": sold,
        "sold_out_replies": refusals,
        "seconds": round(seconds, 3),
        "deductions_per_s": round(sold / seconds),
        "oversold": max(sold - stock, 0),
        "undersold": max(stock - sold, 0),
        "left": sum(levels),
        "min_level": min(levels),
    }


async def _engine_case(
    case: str, engine: StockEngine, stock: int, buckets: int, concurrency: int
) -> dict[str, Any]:
    pool = f"bench-{os.getpid()}-{case}"
    await engine.drop(pool)
    await engine.split(pool, stock, buckets)

    async def deduct() -> bool:
        try:
            await engine.deduct(pool, 1)
        except SoldOut:
            return False
        return True

    drained = await _drain(deduct, concurrency)
    levels = await engine.remaining(pool)
    await engine.drop(pool)
    await engine.aclose()
    return _result(case, buckets, stock, drained, levels)


async def _pg_case(
    case: str, rows: int, stock: int, concurrency: int, connections: int
) -> dict[str, Any]:
    table = f"stock_engine_bench_{os.getpid()}"
    pg = await asyncpg.create_pool(PG_URL, min_size=connections, max_size=connections)
    try:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
        await pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL)")
        base, rest = divmod(stock, rows)
        await pg.executemany(
            f"INSERT INTO {table} (id, n) VALUES ($1, $2)",
            [(i + 1, base + (1 if i < rest else 0)) for i in range(rows)],
        )
        update = f"UPDATE {table} SET n = n - $2 WHERE id = $1 AND n >= $2 RETURNING n"
        empty: set[int] = set()

        async def deduct() -> bool:
            # Like the engine: a random row believed to have stock; sold out only when a
            # fresh look at every row finds none.
            while True:
                able = [i for i in range(1, rows + 1) if i not in empty]
                while able:
                    row = able.pop(random.randrange(len(able)))
                    if await pg.fetchval(update, row, 1) is not None:
                        return True
                    empty.add(row)
                left = await pg.fetch(f"SELECT id FROM {table} WHERE n >= 1")
                if not left:
                    return False
                empty.difference_update(r["id"] for r in left)

        drained = await _drain(deduct, concurrency)
        levels = [r["n"] for r in await pg.fetch(f"SELECT n FROM {table} ORDER BY id")]
        return _result(case, rows, stock, drained, levels)
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
        await pg.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--pg-connections", type=int, default=50)
    parser.add_argument("--redis-connections", type=int, default=16)
    parser.add_argument("--embedded-stock", type=int, default=1_000_000)
    parser.add_argument("--redis-stock", type=int, default=60_000)
    parser.add_argument("--pg-stock", type=int, default=10_000)
    args = parser.parse_args()
    c, n = args.concurrency, args.buckets
    results: list[dict[str, Any]] = []
    notes: list[str] = []

    results.append(
        await _engine_case("embedded", stock_engine_from_url(None), args.embedded_stock, n, c)
    )

    workdir = Path(tempfile.mkdtemp(prefix="stock-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        have_redis = shutil.which("redis-server") is not None
        redis_url = REDIS_URL
        if redis_url is None and have_redis:
            port = _port(set())
            procs.append(_start_redis(workdir / "single", port, cluster=False))
            redis_url = f"redis://127.0.0.1:{port}/0"
        if redis_url is not None:
            for case, buckets in (("redis", n), ("redis-single-key", 1)):
                engine = stock_engine_from_url(redis_url, max_connections=args.redis_connections)
                results.append(await _engine_case(case, engine, args.redis_stock, buckets, c))
        else:
            notes.append("Redis cases skipped: no redis-server on PATH")
        if have_redis:
            taken: set[int] = set()
            ports = [_port(taken) for _ in range(3)]
            for i, port in enumerate(ports):
                procs.append(_start_redis(workdir / f"node{i}", port, cluster=True))
            _create_cluster(ports)
            engine = stock_engine_from_url(
                f"redis://127.0.0.1:{ports[0]}?cluster=1", max_connections=args.redis_connections
            )
            results.append(await _engine_case("redis-cluster-3", engine, args.redis_stock, n, c))
        else:
            notes.append("Redis Cluster case skipped: no redis-server on PATH")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        for case, rows in (("postgresql-hot-row", 1), ("postgresql-rows", n)):
            results.append(await _pg_case(case, rows, args.pg_stock, c, args.pg_connections))
    except (OSError, asyncpg.PostgresError) as exc:
        notes.append(f"PostgreSQL cases skipped: {exc}")

    rate = {r["case"]: r["deductions_per_s"] for r in results}
    summary: dict[str, Any] = {
        "concurrency": c,
        "buckets": n,
        "pg_connections": args.pg_connections,
        "redis_connections": args.redis_connections,
        "results": results,
        "oversold_total": sum(r["oversold"] for r in results),
        "undersold_total": sum(r["undersold"] for r in results),
        "notes": notes,
    }
    if "postgresql-hot-row" in rate:
        for case in ("redis", "redis-cluster-3"):
            if case in rate:
                summary[f"{case}_vs_pg_hot_row"] = round(rate[case] / rate["postgresql-hot-row"], 1)
    summary["targets"] = {
        "embedded_at_least_100000_per_s": rate.get("embedded", 0) >= 100_000,
        "sharded_redis_at_least_5x_pg_hot_row": summary.get("redis_vs_pg_hot_row", 0) >= 5,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
