"""Several workers. Two processes share one file's batches on PostgreSQL (``FOR UPDATE SKIP
LOCKED``): both credit, no batch is done twice, every line is covered once, ledger and
feedback agree. Concurrent pollers of one inbox take each file once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from incentive.config import service as config_service
from incentive.db import Database
from incentive.ledger.models import Account, Transfer
from incentive.points_files.answer_format import RecordStatus
from incentive.points_files.crypto import PointsCrypto
from incentive.points_files.models import PointsBatch, PointsCreditedRecord, PointsFile
from incentive.points_files.pipeline import PointsPipeline
from incentive.settings import Settings
from tests.points_files.kit import (
    Pgp,
    encrypt,
    feedback_of,
    local_transport,
    make_members,
    make_partner,
    plain_file,
    points_cli,
    rec,
    worker_env,
)

RECORDS = 20_000
NAME = "POINTS_ACME_20250110_7.txt.pgp"


async def test_two_workers_share_one_file(
    db: Database,
    database_url: str,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
) -> None:
    if db.is_sqlite:
        pytest.skip("shared batches across processes are a PostgreSQL deployment")
    partner_id, _ = await make_partner(db, crypto, pgp)
    members = [f"w{i}" for i in range(200)]
    await make_members(db, members)
    root = await local_transport(db, tmp_path)
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "points_file.batch_size", 100, actor="test")
        await config_service.set_value(s, "points_file.workers", 1, actor="test")
    records = [rec(f"x{i}", members[i % len(members)], 1 + i % 9) for i in range(RECORDS)]
    encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 7, records)).rename(root / "in" / NAME)

    env = worker_env(quiet_settings, database_url)

    async def cli(*args: str) -> asyncio.subprocess.Process:
        return await points_cli(env, *args)

    # The file is taken from the inbox first, so that neither worker finds nothing to do.
    taker = await cli("poll")
    out, _ = await taker.communicate()
    assert taker.returncode == 0, out.decode()
    workers = [await cli("process", "--timeout", "240") for _ in range(2)]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(w.communicate() for w in workers)), timeout=300
    )
    for w, (out, _) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out.decode()

    async with db.unit_of_work() as s:
        files = (await s.execute(select(PointsFile))).scalars().all()
        batches = (await s.execute(select(PointsBatch))).scalars().all()
        credited = await s.scalar(select(func.count()).select_from(PointsCreditedRecord))
        transfers = await s.scalar(select(func.count()).select_from(Transfer))
        member_points = await s.scalar(
            select(func.sum(Account.balance)).where(Account.owner_type == "user")
        )
        funding = await s.scalar(
            select(Account.balance).where(
                Account.owner_type == "partner", Account.owner_id == partner_id
            )
        )
    assert [f.state for f in files] == ["delivered"]
    assert all(b.state == "done" for b in batches)
    assert len(batches) >= RECORDS // 100
    # Both processes credited batches; each batch was done once (one row per range).
    assert len({b.done_by.rsplit(":", 2)[1] for b in batches if b.done_by}) == 2
    covered = sorted((b.first_line, b.last_line) for b in batches)
    assert covered[0][0] == 2
    assert covered[-1][1] == RECORDS + 1
    assert all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:], strict=False))
    assert sum(b.ok_count for b in batches) == RECORDS == credited == transfers
    results, totals = feedback_of(pgp, root / "out" / f"FEEDBACK_{NAME}")
    assert [r.record_id for r in results] == [r[0] for r in records]
    assert all(r.status is RecordStatus.OK for r in results)
    assert totals.points_credited == member_points == -(funding or 0)


async def test_concurrent_polls_take_a_file_once(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["p1"])
    root = await local_transport(db, tmp_path)
    plain = plain_file(tmp_path / "p.txt", "ACME", 8, [rec("only", "p1", 5)])
    encrypt(pgp, plain).rename(root / "in" / "POINTS_ACME_20250110_8.txt.pgp")
    pipelines = [PointsPipeline(db, quiet_settings) for _ in range(3)]
    try:
        stored = await asyncio.gather(*(p.poll_inboxes() for p in pipelines))
    finally:
        for p in pipelines:
            await p.aclose()
    assert sorted(stored) == [0, 0, 1]
    async with db.unit_of_work() as s:
        assert await s.scalar(select(func.count()).select_from(PointsFile)) == 1
    assert list((root / "in").glob("POINTS_*")) == []
