"""The request stack every route shares, side by side in one run: ``/healthz`` (no caller),
``GET /api/v1/me`` (a different customer's token per request) and an operator list route
(``GET /api/v1/config?limit=20``: caller, unit of work, query parameters, a page).
``me`` cycles through ``--customers`` tokens (each comes back only every few seconds, so the
caller is mostly looked up); ``me_hot`` through ``--hot-customers`` (mostly cached).

    python bench/request_stack.py [--seconds 15] [--connections 200] [--customers 2000]
                                  [--profile DIR]

A real ``incentive serve`` (one uvicorn worker) on PostgreSQL (``INCENTIVE_BENCH_DATABASE_URL``,
default postgresql://postgres@127.0.0.1/postgres; a database ``incentive_bench_stack_<pid>`` is
created and dropped here) and Redis (``INCENTIVE_BENCH_REDIS_URL``, default
redis://127.0.0.1:6379/0: give it a database of its own). Prints JSON: rps, p50/p99 and the
server's CPU milliseconds per request of each route.

``--profile DIR``: ``py-spy record -f raw`` of the server while ``/me`` is driven, written to
DIR, and its samples summarised as shares of the server's CPU per area of the stack
(``profile`` in the JSON). Needs py-spy (``pip install py-spy``) and the right to ptrace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from httpbench import Server, customers_and_operator, tree_cpu_seconds

from incentive import migrations
from incentive.db import Database
from incentive.kit.pgadmin import drop_database, recreate_database

PG_URL = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DB_NAME = f"incentive_bench_stack_{os.getpid()}"

# Areas of a sample. A sample belongs to the first CLAIMS area one of whose markers is in any
# of its frames (that area's own code and everything it calls); otherwise to the GENERIC area
# of its innermost frame that has one. SQLAlchemy's synchronous core runs in greenlets whose
# stacks py-spy shows apart from their caller: those samples are "SQLAlchemy in greenlets".
CLAIMS: list[tuple[str, tuple[str, ...]]] = [
    ("access log line", ("logging/__init__.py", "pythonjsonlogger")),
    ("metrics (prometheus)", ("prometheus_client",)),
    ("JWT verify / decode", ("jwt/", "auth/tokens.py")),
    ("caller resolution (principal)", ("auth/principal.py", "auth/principal_cache.py")),
    ("query-parameter check", ("declared_query_only",)),
    ("unit of work (Session dependency)", ("deps.py", "incentive/db.py")),
    ("response serialisation", ("serialize_response", "jsonable_encoder", "JSONResponse.render")),
    ("SQLAlchemy in greenlets", ("sqlalchemy/orm/session.py", "sqlalchemy/engine/base.py")),
]
GENERIC: list[tuple[str, tuple[str, ...]]] = [
    ("route code (endpoint)", ("/api.py", "incentive/")),
    ("SQLAlchemy / asyncpg", ("sqlalchemy/", "asyncpg/")),
    ("dependency solving / validation", ("fastapi/dependencies", "pydantic")),
    ("FastAPI / Starlette request handling", ("fastapi/", "starlette/")),
    ("uvicorn / HTTP parsing", ("uvicorn/", "httptools")),
    ("event loop / asyncio", ("asyncio/", "uvloop", "selectors")),
]


def area_of(frames: list[str]) -> str:
    for name, markers in CLAIMS:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    for frame in reversed(frames):
        for name, markers in GENERIC:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def summarise(raw: Path) -> dict[str, Any]:
    """Shares (percent of samples) per area of a ``py-spy -f raw`` file (collapsed stacks)."""
    per_area: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit():  # an empty stack: idle
            continue
        samples = int(count)
        total += samples
        per_area[area_of(stack.split(";"))] += samples
    return {
        "samples": total,
        "shares_pct": {
            area: round(100 * n / max(total, 1), 1) for area, n in per_area.most_common()
        },
    }


def _settle(server: Server, timeout: float = 60) -> None:
    """Wait until the server has answered the backlog of the previous run (requests queued
    past wrk's end are still being served), so one run's CPU is not counted in the next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tree_cpu_seconds(server.proc.pid)
        time.sleep(0.5)
        if tree_cpu_seconds(server.proc.pid) - before < 0.05:  # under 10 % of a core
            return


def _profiled(server: Server, out: Path, seconds: int, run: Any) -> tuple[Any, dict[str, Any]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    recorder = subprocess.Popen(
        [spy, "record", "-p", str(server.proc.pid), "-f", "raw", "-o", str(out)]
        + ["-d", str(seconds), "-r", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        figures = run()
    finally:
        recorder.wait(timeout=seconds + 60)
    return figures, summarise(out)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    url = await recreate_database(
        PG_URL.replace("postgresql://", "postgresql+asyncpg://", 1), DB_NAME
    )
    data_dir = Path(tempfile.mkdtemp(prefix="stack-bench-"))
    db = Database(url, pool_size=2)
    try:
        await migrations.upgrade(db.engine)
        customers, operator = await customers_and_operator(db, data_dir / "keys", args.customers)
        await db.dispose()
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_REDIS_URL": REDIS_URL,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": args.log_level,
        }
        with Server(env, log=data_dir / "server.log") as server:
            conns, seconds = args.connections, args.seconds
            routes = {
                "healthz": ("/healthz", ()),
                "me": ("/api/v1/me", customers),
                "me_hot": ("/api/v1/me", customers[: args.hot_customers]),
                "operator_list": ("/api/v1/config?limit=20", (operator,)),
            }
            for path, tokens in routes.values():  # warm-up: imports, caches, pool
                server.wrk(path, tokens=tokens, seconds=2, connections=conns)
            result: dict[str, Any] = {}
            for name, (path, tokens) in routes.items():
                _settle(server)
                result[name] = server.wrk(path, tokens=tokens, seconds=seconds, connections=conns)
            _settle(server)
            if args.profile:
                out = Path(args.profile)
                out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the run)
                _, result["profile_me"] = _profiled(
                    server,
                    out / "me.raw.txt",
                    seconds,
                    lambda: server.wrk(
                        "/api/v1/me", tokens=customers, seconds=seconds, connections=conns
                    ),
                )
            result["me_cpu_vs_healthz"] = round(
                result["me"]["server_cpu_ms"] / max(result["healthz"]["server_cpu_ms"], 1e-9), 2
            )
            result["errors_logged"] = server.errors_logged()
        return result
    finally:
        await db.dispose()
        await drop_database(url, DB_NAME)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument(
        "--hot-customers", type=int, default=50, help="customers of the me_hot case"
    )
    parser.add_argument("--log-level", default="INFO", help="server's INCENTIVE_LOG_LEVEL")
    parser.add_argument("--profile", help="directory for py-spy raw profiles of /me")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))  # noqa: T201
