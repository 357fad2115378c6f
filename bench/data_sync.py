"""Data-model sync (issue 17) to SQL targets beside a bare ``executemany`` of the same rows
into the same target in the same run: prints one JSON document.

The app database (PostgreSQL, created and dropped here) holds ``--records`` campaigns, written
straight into ``campaigns`` in bulk (the ``campaign`` source is the one every data-model test
reads; its rows are one table with no foreign key a bench must fill, so they are the cheapest
to make and the source rows are real ones, ``shape`` included). For each target — a second
PostgreSQL database and MariaDB (``--targets``) — a model of its own (``bench-<target>``, the
same fields: two renames, an integer, a ``concatenate``, a ``date_format`` in Asia/Shanghai and
a strict ``enum_map``; the version and hash columns configured) with one SQL target (table
``sync_rows``), then, timed:

- ``backfill``: ``sync.backfill_page`` page after page (``--page`` source rows each, one unit of
  work each) to the end: read the source, assemble, archive, hand off to the delivery ledger;
- ``delivery``: ``sync.deliver_due`` rounds until a round claims nothing and nothing is pending:
  claim, load the archived documents, upsert into the target, record the outcome;
- ``sync`` = both (records assembled and synced per second, the issue's figure);
- ``target_write``: of the delivery, the seconds inside the target's writer (``SqlWriter.write``,
  wrapped to be timed: connect, reflect once, convert, upsert executemany, commit);
- ``bare``: the same rows (the same columns and values, converted as the writer converts them,
  built before the clock starts) inserted with one plain ``INSERT`` ``executemany`` in one
  transaction into ``bare_rows``, a table identical to ``sync_rows`` and empty, through the same
  driver (``--bare-repeats`` times, emptied between; the median).

Ratios are ``rate / bare rate``. Checked afterwards, per target: ``sync_rows`` holds exactly N
rows, their keys and hash column equal the archive's, and every row's values equal the ones
built from the archive (and ``bare_rows``'s); the ledger holds N delivered rows and nothing else.

Usage: python bench/data_sync.py [--records 20000] [--targets postgresql,mariadb]
Databases (each created and dropped here): ``INCENTIVE_BENCH_DATABASE_URL`` (the app, default
postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_data_sync),
``INCENTIVE_BENCH_TARGET_PG_URL`` (default ..._target on the same server),
``INCENTIVE_BENCH_MARIADB_URL`` (default mysql+aiomysql://root@127.0.0.1:3306/incentive_bench_data_sync).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from httpbench import run_facts
from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from incentive import domains, migrations
from incentive.campaigns.kinds import parse_rules
from incentive.campaigns.models import Campaign
from incentive.data_models import service, sync
from incentive.data_models.fields import Definition
from incentive.data_models.models import ArchivedRecord, Delivery
from incentive.data_models.records import TargetRow, canonical_json, digest
from incentive.data_models.targets import SqlTarget, writer_for
from incentive.data_models.targets.sql import _Plan
from incentive.db import Database, new_id
from incentive.kit.pgadmin import drop_database, recreate_database

DEFAULT_APP = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_data_sync"
DEFAULT_MARIADB = "mysql+aiomysql://root@127.0.0.1:3306/incentive_bench_data_sync"
SEED_CHUNK = 5_000
RULES = {
    "rebate": {
        "user_rebate_bp": 200,
        "merchant_rebate_bp": 50,
        "min_payment_fen": 1000,
        "max_rebate_fen": 500,
    },
    "referral": {
        "referrer_reward_points": 100,
        "referee_reward_points": 20,
        "max_referrals_per_user": 10,
    },
}
FIELDS: list[dict[str, Any]] = [
    {"key": "id", "module_type": "string", "target_system": "crm", "mapped_field": "campaign_id"},
    {
        "key": "name",
        "module_type": "string",
        "target_system": "crm",
        "mapped_field": "title",
        "rule": {"type": "concatenate", "fields": ["kind"], "separator": " / "},
    },
    {
        "key": "starts_at",
        "module_type": "datetime",
        "target_system": "crm",
        "mapped_field": "start_date",
        "rule": {"type": "date_format", "format": "%Y-%m-%d", "time_zone": "Asia/Shanghai"},
    },
    {
        "key": "kind",
        "module_type": "string",
        "target_system": "crm",
        "mapped_field": "kind_code",
        "rule": {"type": "enum_map", "mapping": {"rebate": "RB", "referral": "RF"}, "strict": True},
    },
    {"key": "status", "module_type": "string", "target_system": "crm", "mapped_field": "status"},
    {
        "key": "version",
        "module_type": "integer",
        "target_system": "crm",
        "mapped_field": "campaign_version",
    },
]


def target_table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("record_key", String(64), primary_key=True),
        Column("model_version", Integer, nullable=False),
        Column("record_hash", String(64), nullable=False),
        Column("campaign_id", String(32)),
        Column("title", String(300)),
        Column("start_date", Date),
        Column("kind_code", String(4)),
        Column("status", String(16)),
        Column("campaign_version", BigInteger),
    )


def _pg_target_url(app_url: str) -> str:
    u = make_url(app_url)
    return u.set(database=f"{u.database}_target").render_as_string(hide_password=False)


async def _recreate_mariadb(url: str) -> None:
    name = str(make_url(url).database)
    engine = create_async_engine(make_url(url).set(database="mysql"))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            await conn.execute(text(f"CREATE DATABASE `{name}`"))
    finally:
        await engine.dispose()


async def _drop_mariadb(url: str) -> None:
    name = str(make_url(url).database)
    engine = create_async_engine(make_url(url).set(database="mysql"))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        await engine.dispose()


async def seed(db: Database, n: int) -> float:
    """``n`` active operator campaigns, rebate and referral in turn; seconds taken."""
    started = time.perf_counter()
    stored = {k: parse_rules(k, r).model_dump(mode="json") for k, r in RULES.items()}
    base = datetime(2026, 12, 1, 16, tzinfo=UTC)
    rows = []
    for i in range(n):
        kind = "rebate" if i % 2 == 0 else "referral"
        at = base + timedelta(seconds=i)
        rows.append(
            {
                "id": new_id(),
                "kind": kind,
                "owner_type": "operator",
                "merchant_id": None,
                "name": f"Campaign {i:06d}",
                "description": "",
                "starts_at": base + timedelta(hours=i % 48),
                "ends_at": base + timedelta(days=30),
                "status": "active",
                "rules": stored[kind],
                "budget_account_id": None,
                "created_by": "bench",
                "created_at": at,
                "updated_at": at,
                "version": 1 + i % 3,
            }
        )
    for i in range(0, n, SEED_CHUNK):
        async with db.unit_of_work() as s:
            await s.execute(insert(Campaign), rows[i : i + SEED_CHUNK])
    return time.perf_counter() - started


async def backfill(db: Database, model_id: str, page: int) -> int:
    handed = 0
    position = None
    while True:
        async with db.unit_of_work() as s:
            work, position = await sync.backfill_page(s, model_id, position=position, limit=page)
        handed += len(work.changed)
        if position is None:
            return handed


async def pending(db: Database, model_id: str) -> int:
    async with db.unit_of_work() as s:
        found = await s.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.model_id == model_id, Delivery.state == "pending")
        )
        return int(found or 0)


async def deliver(db: Database, model_id: str) -> tuple[int, int]:
    """``deliver_due`` rounds until one claims nothing and nothing is pending: delivered,
    rounds."""
    delivered = rounds = 0
    while True:
        got = await sync.deliver_due(db)
        rounds += 1
        delivered += got["delivered"]
        if got["retried"] or got["dead"]:
            raise RuntimeError(f"a delivery failed: {got}")
        if not any(got.values()) and not await pending(db, model_id):
            return delivered, rounds


async def archive_rows(db: Database, model_id: str, plan: _Plan) -> list[dict[str, Any]]:
    """The target rows the archive says ``sync_rows`` must hold (the writer's conversions)."""
    async with db.unit_of_work() as s:
        found = await s.execute(
            select(
                ArchivedRecord.record_key,
                ArchivedRecord.version,
                ArchivedRecord.hash,
                ArchivedRecord.document,
            ).where(ArchivedRecord.model_id == model_id)
        )
        return [
            plan.params(TargetRow(k, model_id, v, h, json.loads(doc)["systems"]["crm"]))
            for k, v, h, doc in found
        ]


async def table_rows(engine: AsyncEngine, table: Table) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(table).order_by(table.c.record_key))]


def _ordered(rows: list[dict[str, Any]], table: Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[c.name] for c in table.columns) for r in rows)


def _digest(rows: list[tuple[Any, ...]]) -> str:
    def plain(v: Any) -> Any:
        return v.isoformat() if isinstance(v, date) else v

    return digest(canonical_json([[plain(v) for v in r] for r in rows]))


async def bare(engine: AsyncEngine, table: Table, rows: list[dict[str, Any]]) -> float:
    async with engine.begin() as conn:
        await conn.execute(table.delete())
    started = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(insert(table), rows)
    return time.perf_counter() - started


class TimedWriter:
    """The target's real writer, its seconds in ``write`` added up (connect and reflection
    on the first write included)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.seconds = 0.0

    async def write(self, rows: Any) -> None:
        started = time.perf_counter()
        try:
            await self.writer.write(rows)
        finally:
            self.seconds += time.perf_counter() - started

    async def close(self) -> None:
        await self.writer.close()


async def one_target(
    db: Database, kind: str, url: str, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    model_id = f"bench-{kind}"
    metadata = MetaData()
    synced, bare_table = target_table(metadata, "sync_rows"), target_table(metadata, "bare_rows")
    engine = create_async_engine(url)
    config = SqlTarget(
        url=url, table="sync_rows", version_column="model_version", hash_column="record_hash"
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        async with db.unit_of_work() as s:
            definition = Definition.model_validate({"source": "campaign", "fields": FIELDS})
            await service.create(
                s, None, model_id=model_id, name=model_id, definition=definition, partners=[]
            )
            target = await sync.add_target(
                s, None, model_id, name=kind, system="crm", systems=["crm"], config=config
            )
        timed = TimedWriter(writer_for(config))
        sync._writers[(target.id, target.updated_at)] = timed
        started = time.perf_counter()
        handed = await backfill(db, model_id, args.page)
        backfill_s = time.perf_counter() - started
        started = time.perf_counter()
        delivered, rounds = await deliver(db, model_id)
        delivery_s = time.perf_counter() - started
        plan = _Plan(synced, config)
        expected = await archive_rows(db, model_id, plan)
        bare_runs = [await bare(engine, bare_table, expected) for _ in range(args.bare_repeats)]
        bare_s = statistics.median(bare_runs)
        # Checks: the target holds the archive, row for row, value for value.
        want = _ordered(expected, synced)
        got = await table_rows(engine, synced)
        got_bare = await table_rows(engine, bare_table)
        async with db.unit_of_work() as s:
            archived = dict(
                (
                    await s.execute(
                        select(ArchivedRecord.record_key, ArchivedRecord.hash).where(
                            ArchivedRecord.model_id == model_id
                        )
                    )
                ).all()
            )
            ledger = dict(
                (
                    await s.execute(
                        select(Delivery.state, func.count())
                        .where(Delivery.model_id == model_id)
                        .group_by(Delivery.state)
                    )
                ).all()
            )
        hash_at = [c.name for c in synced.columns].index("record_hash")
        checks = {
            "handed_off": handed == n,
            "delivered": delivered == n,
            "rows_in_target": len(got) == n,
            "keys_and_hashes_match_archive": {r[0]: r[hash_at] for r in got} == archived,
            "values_match_archive": got == want,
            "bare_rows_equal_synced_rows": got_bare == got,
            "ledger_all_delivered": ledger == {"delivered": n},
        }
        rate = {
            "backfill": n / backfill_s,
            "delivery": n / delivery_s,
            "sync": n / (backfill_s + delivery_s),
            "target_write": n / timed.seconds,
            "bare": n / bare_s,
        }
        return {
            "records": n,
            "seconds": {
                "backfill": round(backfill_s, 3),
                "delivery": round(delivery_s, 3),
                "sync": round(backfill_s + delivery_s, 3),
                "target_write": round(timed.seconds, 3),
                "bare": round(bare_s, 3),
                "bare_runs": [round(b, 3) for b in bare_runs],
            },
            "records_per_s": {k: round(v, 1) for k, v in rate.items()},
            "ratio_to_bare": {
                k: round(rate[k] / rate["bare"], 3)
                for k in ("sync", "delivery", "backfill", "target_write")
            },
            "delivery_rounds": rounds,
            "target_digest": _digest(got),
            "checks": checks,
            "ok": all(checks.values()),
        }
    finally:
        await sync.close_writers()
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=20_000, help="campaigns synced")
    parser.add_argument("--targets", default="postgresql,mariadb")
    parser.add_argument("--page", type=int, default=500, help="source rows per backfill page")
    parser.add_argument("--bare-repeats", type=int, default=3)
    args = parser.parse_args()
    kinds = [k for k in args.targets.split(",") if k]
    if not set(kinds) <= {"postgresql", "mariadb"}:
        parser.error("--targets: postgresql and/or mariadb")
    app_url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_APP)
    urls = {
        "postgresql": os.environ.get("INCENTIVE_BENCH_TARGET_PG_URL", _pg_target_url(app_url)),
        "mariadb": os.environ.get("INCENTIVE_BENCH_MARIADB_URL", DEFAULT_MARIADB),
    }
    domains.load()
    name = str(make_url(app_url).database)
    await recreate_database(app_url, name)
    if "postgresql" in kinds:
        await recreate_database(urls["postgresql"], str(make_url(urls["postgresql"]).database))
    if "mariadb" in kinds:
        await _recreate_mariadb(urls["mariadb"])
    db = Database(app_url)
    report: dict[str, Any] = run_facts("data_sync")
    report.update(
        {
            "records": args.records,
            "source": "campaign",
            "page": args.page,
            "claim": sync.CLAIM,
            "fields": len(FIELDS),
        }
    )
    try:
        await migrations.upgrade(db.engine)
        report["seed_seconds"] = round(await seed(db, args.records), 3)
        report["targets"] = {}
        for kind in kinds:
            report["targets"][kind] = await one_target(db, kind, urls[kind], args.records, args)
        report["ok"] = all(t["ok"] for t in report["targets"].values())
    finally:
        await db.dispose()
        await drop_database(app_url, name)
        if "postgresql" in kinds:
            await drop_database(urls["postgresql"], str(make_url(urls["postgresql"]).database))
        if "mariadb" in kinds:
            await _drop_mariadb(urls["mariadb"])
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
