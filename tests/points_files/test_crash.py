"""Crash safety: a real worker process is killed (SIGKILL) at many points of the pipeline and
restarted; the outcome of every record is exactly the one worked out from the input (each
good record credited exactly once, each member's balance to the point), the feedback has one
line per input record, and the ledger agrees with the feedback."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from incentive.config import service as config_service
from incentive.db import Database
from incentive.ledger.models import Account, Transfer
from incentive.points_files.answer_format import RecordStatus
from incentive.points_files.crypto import PointsCrypto
from incentive.points_files.format import RecordReason
from incentive.points_files.models import PointsBatch, PointsCreditedRecord, PointsFile
from incentive.settings import Settings
from tests.points_files.kit import (
    Pgp,
    encrypt,
    feedback_of,
    local_transport,
    make_members,
    make_partner,
    member_balances,
    plain_file,
    points_cli,
    rec,
    worker_env,
)

RECORDS = 1_200
NAME = "POINTS_ACME_20250109_3.txt.pgp"

CRASHES = [
    "received:1",  # stored and recorded, still in the inbox
    "decrypted:1",
    "staging:2",  # two chunks of 300 committed, two to go
    "staged:1",
    "validated:1",
    "batch_claimed:3",
    "batch_credited:4",  # ledger written inside the transaction, not committed
    "batch_committed:5",
    "feedback_line:1",
    "feedback_encrypted:1",
    "delivered:1",  # in the outbox, not yet recorded as delivered
]


def _expected_outcome(member: str) -> tuple[RecordStatus, RecordReason | None]:
    if member == "ghost":
        return RecordStatus.FAILED, RecordReason.UNKNOWN_MEMBER
    if member == "frozen":
        return RecordStatus.FAILED, RecordReason.MEMBER_BLOCKED
    return RecordStatus.OK, None


async def _process(env: dict[str, str], crash: str | None) -> int:
    run_env = dict(env)
    if crash:
        run_env["INCENTIVE_POINTS_CRASH_AT"] = crash
    proc = await points_cli(run_env, "process", "--timeout", "90")
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    if crash is None:
        assert proc.returncode == 0, out.decode()
    return proc.returncode


@pytest.mark.parametrize("crash", CRASHES)
async def test_killed_worker_resumes_without_loss_or_double_credit(
    db: Database,
    database_url: str,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    crash: str,
) -> None:
    partner_id, _ = await make_partner(db, crypto, pgp)
    members = [f"m{i}" for i in range(40)]
    await make_members(db, members)
    await make_members(db, ["frozen"], blocked=True)
    root = await local_transport(db, tmp_path)
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "points_file.batch_size", 100, actor="test")
    records = []
    for i in range(RECORDS):
        member = members[i % len(members)]
        if i % 97 == 0:
            member = "ghost"
        elif i % 101 == 0:
            member = "frozen"
        records.append(rec(f"r{i}", member, 1 + i % 50))
    records.append(rec("r5", members[0], 7))  # a record id repeated inside the file
    plain = plain_file(tmp_path / "p.txt", "ACME", 3, records)
    encrypt(pgp, plain).rename(root / "in" / NAME)

    env = {
        **worker_env(quiet_settings, database_url),
        "INCENTIVE_POINTS_LEASE_SECONDS": "1",
        "INCENTIVE_POINTS_STAGE_CHUNK": "300",
    }
    assert await _process(env, crash) == -signal.SIGKILL
    await _process(env, None)

    async with db.unit_of_work() as s:
        files = (await s.execute(select(PointsFile))).scalars().all()
        assert [f.state for f in files] == ["delivered"]
        batches = (await s.execute(select(PointsBatch))).scalars().all()
        credited_ids = await s.scalar(select(func.count()).select_from(PointsCreditedRecord))
        transfers = await s.scalar(select(func.count()).select_from(Transfer))
        member_points = await s.scalar(
            select(func.sum(Account.balance)).where(Account.owner_type == "user")
        )
        funding = await s.scalar(
            select(Account.balance).where(
                Account.owner_type == "partner", Account.owner_id == partner_id
            )
        )
    # What must have happened, worked out from the input alone (not from the code's outputs):
    # every record of a known, unblocked member credited exactly once, the repeat of r5 not.
    expected_results = [(r[0], *_expected_outcome(r[1])) for r in records[:-1]]
    expected_results.append(("r5", RecordStatus.FAILED, RecordReason.DUPLICATE_RECORD))
    expected_balances: dict[str, int] = {}
    for (_, member, points, _, _), (_, status, _) in zip(records, expected_results, strict=True):
        if status is RecordStatus.OK:
            expected_balances[member] = expected_balances.get(member, 0) + points
    assert list((root / "in").glob("POINTS_*")) == []
    assert [p.name for p in (root / "out").iterdir()] == [f"FEEDBACK_{NAME}"]
    results, totals = feedback_of(pgp, root / "out" / f"FEEDBACK_{NAME}")
    assert [r.record_id for r in results] == [r[0] for r in records]  # one line per D, in order
    assert [(r.record_id, r.status, r.reason_code) for r in results] == expected_results
    assert await member_balances(db) == expected_balances
    assert totals.points_credited == sum(expected_balances.values())
    ok = [r for r in results if r.status is RecordStatus.OK]
    assert len({r.record_id for r in ok}) == len(ok) == totals.ok_count == credited_ids == transfers
    assert totals.points_credited == member_points == -(funding or 0)
    assert totals.failed_count == RECORDS + 1 - len(ok) > 0
    assert all(b.state == "done" for b in batches)
    # batches cover every line exactly once
    covered = sorted((b.first_line, b.last_line) for b in batches)
    assert covered[0][0] == 2
    assert all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:], strict=False))
