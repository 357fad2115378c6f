"""Activities, rebates and join codes on PostgreSQL: prints one JSON document.

Parts (``--parts``, comma-separated; one function ``part_<name>`` each):

- ``codes``: an operator generates ``--codes`` join codes (default 1,000,000) for one
  campaign with one ``POST /api/v1/campaigns/{id}/join-codes`` against a real
  ``incentive serve`` (timed from the request to its 201: generation, COPY, unique checks,
  commit), then downloads them with the streamed CSV export (timed to the last byte). The
  rows and lines are counted afterwards. Target (issue 12): 1,000,000 codes in <= 20 s.

Every run uses a fresh database (``INCENTIVE_BENCH_DATABASE_URL``, default
postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_activities), created and dropped here.

Usage: python bench/activities.py [--parts codes] [--codes 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from httpbench import Server, customers_and_operator
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.db import Database, utcnow
from incentive.join_codes.models import JoinCode
from incentive.kit.pgadmin import drop_database, recreate_database

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_activities"
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


PARTS: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]] = {"codes": part_codes}


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {sorted(PARTS)}")
    parser.add_argument("--codes", type=int, default=1_000_000)
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
        with Server(env, log=data_dir / "server.log") as server:
            _, operator = await customers_and_operator(db, data_dir / "keys", 0)
            run = Run(url, db, server, operator, args)
            for part in parts:
                report["parts"][part] = await PARTS[part](run)
    finally:
        await db.dispose()
        await drop_database(url, name)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
