"""Flash sales, side by side in one run: the stock engine's backends, then HTTP purchases.

    python bench/flash_sale.py [--concurrency 200] [--buckets 16] [--parts engine,http]

**engine**: each case splits a stock, then ``concurrency`` tasks deduct 1 unit in a loop until
sold out; the figure is units sold per second. Every case then checks that exactly the stock
was sold (oversold = undersold = 0) and no bucket/row is below zero. Cases: embedded engine;
Redis with N buckets and with one key (N=1); Redis Cluster (3 masters) with N buckets;
PostgreSQL one hot row (``UPDATE ... SET n = n - q WHERE id = 1 AND n >= q``) and N rows.

**http**: a real ``incentive serve`` (``--workers``, default 1) on PostgreSQL with the Redis stock
engine; ``wrk`` (``apt-get install wrk``) with ``--concurrency`` connections posts purchases
of quantity 1 (a different customer token and Idempotency-Key per request) for
``--seconds``, then hits the same server's bare JSON endpoint (``GET /healthz``) the same way.
Reports requests/s and p50/p99 latency of both and their ratio. Then a second sale of
``--soldout-stock`` units is bought out by the same load: every run checks oversold = 0 and
acknowledged (201s wrk saw) = committed (purchases in the database) = stock.

Redis servers and the cluster are started here on free loopback ports (``redis-server`` must
be on PATH) unless ``INCENTIVE_BENCH_REDIS_URL`` names a server; PostgreSQL comes from
``INCENTIVE_BENCH_DATABASE_URL`` (default postgresql://postgres@127.0.0.1/postgres): the engine
cases use a table of their own, the HTTP part a database ``incentive_bench_flash_<pid>`` created and
dropped here. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
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
import httpx
import redis
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from httpbench import Server, customers_and_operator
from sqlalchemy import func, select

from incentive import migrations
from incentive.auth.keyring import KeyRing
from incentive.db import Database, new_id, utcnow
from incentive.flash_sales.models import Purchase
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.stock.engine import StockEngine, stock_engine_from_url
from incentive.stock.errors import SoldOut

PG_URL = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL")
DB_NAME = f"incentive_bench_flash_{os.getpid()}"


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


# A case's load runs in ``processes`` client processes (one Python process is the ceiling
# long before Redis is; the API tier is many processes too). Each sets up its connections,
# waits for the common start, drains with its share of the tasks and reports
# (sold, refusals, started, ended) in wall-clock time; the case takes first start to last end.


async def _engine_deducter(url: str, pool: str, connections: int) -> Any:
    return await _engine_deducter_for(stock_engine_from_url(url, max_connections=connections), pool)


async def _pg_deducter(table: str, rows: int, connections: int) -> Any:
    pg = await asyncpg.create_pool(PG_URL, min_size=connections, max_size=connections)
    update = f"UPDATE {table} SET n = n - $2 WHERE id = $1 AND n >= $2 RETURNING n"
    empty: set[int] = set()

    async def deduct() -> bool:
        # Like the engine: a random row believed to have stock; sold out only when a fresh
        # look at every row finds none.
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

    return deduct, pg.close


def _client(
    kind: str, spec: tuple[Any, ...], concurrency: int, ready: Any, go: Any, out: Any
) -> None:
    async def run() -> None:
        if kind == "engine":
            deduct, close = await _engine_deducter(*spec)
        else:
            deduct, close = await _pg_deducter(*spec)
        ready.release()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        started = time.time()
        sold, refusals, _ = await _drain(deduct, concurrency)
        out.put((sold, refusals, started, time.time()))
        await close()

    asyncio.run(run())


def _load(
    kind: str, spec: tuple[Any, ...], concurrency: int, processes: int
) -> tuple[int, int, float]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    share = max(concurrency // processes, 1)
    procs = [
        ctx.Process(target=_client, args=(kind, spec, share, ready, go, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    go.set()
    reports = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    seconds = max(r[3] for r in reports) - min(r[2] for r in reports)
    return sum(r[0] for r in reports), sum(r[1] for r in reports), seconds


async def _embedded_case(stock: int, buckets: int, concurrency: int) -> dict[str, Any]:
    engine = stock_engine_from_url(None)
    await engine.split("bench", stock, buckets)
    deduct, _ = await _engine_deducter_for(engine, "bench")
    drained = await _drain(deduct, concurrency)
    levels = await engine.remaining("bench")
    return _result("embedded", buckets, stock, drained, levels)


async def _engine_deducter_for(engine: StockEngine, pool: str) -> Any:
    async def deduct() -> bool:
        try:
            await engine.deduct(pool, 1)
        except SoldOut:
            return False
        return True

    return deduct, engine.aclose


async def _engine_case(
    case: str, url: str, stock: int, buckets: int, args: argparse.Namespace
) -> dict[str, Any]:
    engine = stock_engine_from_url(url)
    pool = f"bench-{os.getpid()}-{case}"
    await engine.drop(pool)
    await engine.split(pool, stock, buckets)
    connections = max(args.redis_connections // args.client_processes, 1)
    drained = await asyncio.to_thread(
        _load, "engine", (url, pool, connections), args.concurrency, args.client_processes
    )
    levels = await engine.remaining(pool)
    await engine.drop(pool)
    await engine.aclose()
    return _result(case, buckets, stock, drained, levels)


async def _pg_case(case: str, rows: int, stock: int, args: argparse.Namespace) -> dict[str, Any]:
    table = f"stock_engine_bench_{os.getpid()}"
    pg = await asyncpg.connect(PG_URL)
    try:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
        await pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL)")
        base, rest = divmod(stock, rows)
        await pg.executemany(
            f"INSERT INTO {table} (id, n) VALUES ($1, $2)",
            [(i + 1, base + (1 if i < rest else 0)) for i in range(rows)],
        )
        connections = max(args.pg_connections // args.client_processes, 1)
        drained = await asyncio.to_thread(
            _load, "pg", (table, rows, connections), args.concurrency, args.client_processes
        )
        levels = [r["n"] for r in await pg.fetch(f"SELECT n FROM {table} ORDER BY id")]
        return _result(case, rows, stock, drained, levels)
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
        await pg.close()


async def engine_part(args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    c, n = args.concurrency, args.buckets
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    results.append(await _embedded_case(args.embedded_stock, n, c))
    if redis_url is not None:
        for case, buckets in (("redis", n), ("redis-single-key", 1)):
            results.append(await _engine_case(case, redis_url, args.redis_stock, buckets, args))
    else:
        notes.append("Redis cases skipped: no redis-server on PATH")
    if shutil.which("redis-server") is not None:
        workdir = Path(tempfile.mkdtemp(prefix="stock-bench-cluster-"))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            taken: set[int] = set()
            ports = [_port(taken) for _ in range(3)]
            for i, port in enumerate(ports):
                procs.append(_start_redis(workdir / f"node{i}", port, cluster=True))
            _create_cluster(ports)
            url = f"redis+cluster://127.0.0.1:{ports[0]}"
            results.append(await _engine_case("redis-cluster-3", url, args.redis_stock, n, args))
        finally:
            _stop(procs)
            shutil.rmtree(workdir, ignore_errors=True)
    else:
        notes.append("Redis Cluster case skipped: no redis-server on PATH")
    try:
        for case, rows in (("postgresql-hot-row", 1), ("postgresql-rows", n)):
            results.append(await _pg_case(case, rows, args.pg_stock, args))
    except (OSError, asyncpg.PostgresError) as exc:
        notes.append(f"PostgreSQL cases skipped: {exc}")

    rate = {r["case"]: r["deductions_per_s"] for r in results}
    part: dict[str, Any] = {
        "concurrency": c,
        "client_processes": args.client_processes,
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
                part[f"{case}_vs_pg_hot_row"] = round(rate[case] / rate["postgresql-hot-row"], 1)
    part["targets"] = {
        "embedded_at_least_100000_per_s": rate.get("embedded", 0) >= 100_000,
        "sharded_redis_at_least_5x_pg_hot_row": part.get("redis_vs_pg_hot_row", 0) >= 5,
    }
    return part


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=10)


# --- HTTP purchases against the bare endpoint ---------------------------------------------


async def _sale(client: httpx.AsyncClient, operator: str, total: int) -> str:
    now = utcnow()
    h = {"Authorization": f"Bearer {operator}"}
    body = {
        "name": "Bench flash sale",
        "sku": "BENCH-1",
        "item_name": "Phone",
        "price_fen": 99_900,
        "total_stock": total,
        "per_user_limit": min(total, 1_000_000),
        "starts_at": (now.replace(microsecond=0)).isoformat(),
        "ends_at": (now.replace(year=now.year + 1)).isoformat(),
    }
    r = await client.post("/api/v1/flash-sales", json=body, headers=h)
    r.raise_for_status()
    sale_id = str(r.json()["id"])
    for to in ("pending_review",):  # the automated review approves a clean sale
        path = f"/api/v1/campaigns/{sale_id}/transitions"
        (await client.post(path, json={"to": to}, headers=h)).raise_for_status()
    (await client.post(f"/api/v1/flash-sales/{sale_id}/activate", headers=h)).raise_for_status()
    for _ in range(300):
        r = await client.get(f"/api/v1/flash-sales/{sale_id}", headers=h)
        if r.json()["split"]:
            return sale_id
        await asyncio.sleep(0.1)
    raise RuntimeError("the sale's stock was never split")


async def _committed(db: Database, sale_id: str) -> int:
    async with db.unit_of_work() as s:
        total = await s.scalar(
            select(func.coalesce(func.sum(Purchase.quantity), 0)).where(
                Purchase.flash_sale_id == sale_id
            )
        )
    return int(total or 0)


def _pool(env: dict[str, str]) -> str:
    """The server's database pool as its settings make it (size + overflow)."""
    from incentive.settings import Settings

    fields = Settings.model_fields
    if "db_pool_size" not in fields:  # code from before pools were settings (a "before" run)
        return "30+10"
    size = env.get("INCENTIVE_DB_POOL_SIZE", fields["db_pool_size"].default)
    overflow = env.get("INCENTIVE_DB_MAX_OVERFLOW", fields["db_max_overflow"].default)
    return f"{size}+{overflow}"


def _lean_server(env: dict[str, str], log: Path) -> Server:
    """``bench/lean_purchase.py`` (the reference line) as its own uvicorn process, like
    ``incentive serve``: one worker, no access log; ``wrk`` and CPU per request as Server's."""
    command = [sys.executable, "-m", "uvicorn", "lean_purchase:app", "--port", "{port}"]
    command += ["--app-dir", str(Path(__file__).parent), "--no-access-log"]
    return Server(env, log=log, command=[*command, "--log-level", "warning"])


def _lean_env(url: str, redis_url: str, keys: Path, data_dir: Path) -> dict[str, str]:
    ring = KeyRing.load(keys)
    pem = data_dir / "lean-public.pem"
    pem.write_bytes(
        ring.active.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return {
        "LEAN_DATABASE_URL": url.replace("postgresql+asyncpg://", "postgresql://", 1),
        "LEAN_REDIS_URL": redis_url,
        "LEAN_PUBLIC_KEY": str(pem),
        "LEAN_KID": ring.active.kid,
        "LEAN_SALE_ID": new_id(),
        "LEAN_STOCK": "100000000",
        "LEAN_LIMIT": "1000000",
    }


async def http_part(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not on PATH (apt-get install wrk)"}
    url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", PG_URL)
    url = await recreate_database(url.replace("postgresql://", "postgresql+asyncpg://", 1), DB_NAME)
    data_dir = Path(tempfile.mkdtemp(prefix="flash-bench-"))
    db = Database(url)
    server = None
    try:
        await migrations.upgrade(db.engine)
        buyers, operator = await customers_and_operator(db, data_dir / "keys", args.customers)
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_REDIS_URL": redis_url,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": "WARNING",
        }
        server = Server(env, workers=args.workers, log=data_dir / "server.log")
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            big = await _sale(client, operator, 100_000_000)
            small = await _sale(client, operator, args.soldout_stock)
        seconds, conns = args.seconds, args.concurrency
        buy = {"tokens": buyers, "method": "POST", "body": '{"quantity": 1}', "connections": conns}
        big_path = f"/api/v1/flash-sales/{big}/purchases"
        server.wrk("/healthz", seconds=2, connections=conns)  # warm-up
        server.wrk(big_path, seconds=2, **buy)
        purchases = server.wrk(big_path, seconds=seconds, **buy)
        bare = server.wrk("/healthz", seconds=seconds, connections=conns)
        lean: dict[str, Any] | None = None
        lean_errors = None
        if not args.no_reference:
            # The reference line, on the same PostgreSQL + Redis with the same tokens and load,
            # while incentive's server idles.
            lean_env = _lean_env(url, redis_url, data_dir / "keys", data_dir)
            try:
                lean_server = _lean_server(lean_env, log=data_dir / "lean.log")
            except RuntimeError as exc:  # e.g. PostgreSQL out of connections: say so, go on
                lean_errors = str(exc)
            else:
                with lean_server:
                    lean_path = f"/api/v1/flash-sales/{lean_env['LEAN_SALE_ID']}/purchases"
                    lean_server.wrk(lean_path, seconds=2, **buy)  # warm-up
                    lean = lean_server.wrk(lean_path, seconds=seconds, **buy)
                    lean_errors = lean_server.errors_logged()
        # Sold out under the same load: stock small enough to run out within the run.
        # Long enough to sell out well before the end: requests cut off by wrk's stop (their
        # 201 never read) would make acknowledged < committed without anything being wrong.
        soldout_seconds = max(
            seconds, math.ceil(1.5 * args.soldout_stock / max(purchases["rps"], 1)) + 5
        )
        soldout = server.wrk(
            f"/api/v1/flash-sales/{small}/purchases", seconds=soldout_seconds, **buy
        )
        await asyncio.sleep(1)
        committed = await _committed(db, small)
        committed_big = await _committed(db, big)
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            h = {"Authorization": f"Bearer {operator}"}
            state = (await client.get(f"/api/v1/flash-sales/{small}", headers=h)).json()
    finally:
        if server is not None:
            server.stop()
        errors_logged = server.errors_logged() if server is not None else None
        await db.dispose()
        await drop_database(url, DB_NAME)
        shutil.rmtree(data_dir, ignore_errors=True)
    ratio = purchases["rps"] / bare["rps"]
    return {
        "server": f"incentive serve --workers {args.workers}, PostgreSQL + Redis stock "
        f"({args.buckets} buckets), database pool per process {_pool(env)}",
        "load": f"wrk -t2 -c{conns} -d{seconds}s",
        "customers": args.customers,
        "purchases": purchases,
        "bare_healthz": bare,
        "purchases_over_bare": round(ratio, 3),
        "reference": {"not_run": lean_errors}
        if lean is None
        else {
            "server": "bench/lean_purchase.py: Starlette + asyncpg + redis-py, 1 uvicorn worker",
            "purchases": lean,
            "server_errors_logged": lean_errors,
        },
        "incentive_over_reference_rps": None
        if lean is None
        else round(purchases["rps"] / max(lean["rps"], 1), 3),
        "incentive_over_reference_cpu_ms": None
        if lean is None
        else round(purchases["server_cpu_ms"] / max(lean["server_cpu_ms"], 1e-9), 2),
        "server_errors_logged": errors_logged,
        "warmup_and_main_run": {
            "acknowledged_201": purchases["ok"],
            "committed_units_incl_warmup": committed_big,
        },
        "sold_out_run": {
            "seconds": soldout_seconds,
            "stock": args.soldout_stock,
            "acknowledged_201": soldout["ok"],
            "committed": committed,
            "remaining": state["remaining"],
            "sold_out_409": soldout["conflict_409"],
            "other": soldout["other"] + soldout["unavailable_503"] + soldout["errors"],
            "oversold": max(committed - args.soldout_stock, 0),
            "acknowledged_equals_committed": soldout["ok"] == committed,
            "sold_equals_stock": committed == args.soldout_stock and state["remaining"] == 0,
        },
        "targets": {
            "purchase_server_cpu_ms_at_most_0.6": purchases["server_cpu_ms"] <= 0.6,
            "purchase_p99_ms_at_most_300": purchases["p99_ms"] <= 300,
            "purchase_rps_at_least_0.4_of_reference": None
            if lean is None
            else purchases["rps"] >= 0.4 * lean["rps"],
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--parts", default="engine,http")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--pg-connections", type=int, default=50)
    parser.add_argument("--redis-connections", type=int, default=16)
    parser.add_argument("--embedded-stock", type=int, default=1_000_000)
    parser.add_argument("--redis-stock", type=int, default=60_000)
    parser.add_argument("--pg-stock", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--soldout-stock", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (HTTP part)")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the lean reference line (HTTP part)"
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",")}
    report: dict[str, Any] = {"bench": "flash_sale", "cpus": os.cpu_count()}
    workdir = Path(tempfile.mkdtemp(prefix="flash-bench-redis-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = REDIS_URL
        if redis_url is None and shutil.which("redis-server") is not None:
            port = _port(set())
            procs.append(_start_redis(workdir / "single", port, cluster=False))
            redis_url = f"redis://127.0.0.1:{port}/0"
        if "engine" in parts:
            report["engine"] = await engine_part(args, redis_url)
        if "http" in parts:
            if redis_url is None:
                report["http"] = {"skipped": "no redis-server on PATH"}
            else:
                redis.Redis.from_url(redis_url).flushdb()
                report["http"] = await http_part(args, redis_url)
    finally:
        _stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
