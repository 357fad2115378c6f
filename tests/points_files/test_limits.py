"""A file never hurts the platform and never gets stuck (issue 10 items 1-3): compression
bombs, a full disk, points beyond 64 bits, a stage that keeps failing, one record the ledger
refuses. Each runs the real pipeline (real gpg, the test's engine) and checks from outside:
the answer the partner decrypts, each member's balance, what is left on disk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.app import create_app
from incentive.auth.models import User
from incentive.db import Database
from incentive.ledger import service as ledger
from incentive.ledger.models import BALANCE_MAX
from incentive.points_files import intake, service, storage
from incentive.points_files.answer_format import RecordStatus
from incentive.points_files.crypto import PointsCrypto
from incentive.points_files.format import RecordReason, RejectReason
from incentive.points_files.models import PointsFile
from incentive.points_files.pipeline import PointsPipeline
from incentive.settings import Settings
from tests.points_files.kit import (
    NOW,
    Pgp,
    decrypt_answer,
    encrypt,
    exception_of,
    feedback_of,
    file_row,
    make_members,
    make_partner,
    member_balances,
    plain_file,
    rec,
    run_pipeline,
    transfer_count,
)

NAME = "POINTS_ACME_20250109_1.txt.pgp"


async def _receive(db: Database, settings: Settings, enc: Path, name: str = NAME) -> str:
    async with db.unit_of_work() as s:
        who = await intake.sender(s, "ACME")
    row = await intake.receive(db, settings, who, name, storage.file_chunks(enc), source="http")
    return row.id


def _work_files(settings: Settings) -> list[str]:
    work = storage.work_root(settings) / "work"
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


# ------------------------------------------------------------------ item 1: bombs, disk


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
async def test_compression_bomb_is_too_large(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    sign: bool,
) -> None:
    await make_partner(db, crypto, pgp, max_plain_bytes=2 * 1024 * 1024)
    zeros = tmp_path / "zeros"
    with zeros.open("wb") as f:
        f.truncate(48 * 1024 * 1024)
    enc = tmp_path / "bomb.pgp"
    args = ["--compress-algo", "bzip2", "-z", "9", "--output", str(enc), "--encrypt"]
    args += ["--recipient", "points@incentive"]
    if sign:
        args += ["--sign", "--local-user", pgp.partner.fingerprint]
    assert pgp.partner.run(*args, str(zeros)).returncode == 0
    assert enc.stat().st_size < 100_000
    file_id = await _receive(db, quiet_settings, enc)
    await run_pipeline(db, quiet_settings)
    done = await file_row(db, file_id)
    assert (done.state, done.reason_code) == ("delivered", "TOO_LARGE")
    assert done.answer_name is not None
    report = exception_of(pgp, storage.answer_path(quiet_settings, file_id, done.answer_name))
    assert report.reason_code is RejectReason.TOO_LARGE
    assert str(2 * 1024 * 1024) in report.detail
    assert _work_files(quiet_settings) == []
    assert await transfer_count(db) == 0


@pytest.fixture
async def full_disk_api(
    quiet_settings: Settings, db: Database
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    full = quiet_settings.model_copy(update={"points_min_free_bytes": 2**62})
    application = create_app(full, db)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c, full


async def test_upload_refused_while_the_disk_is_nearly_full(
    db: Database,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    full_disk_api: tuple[httpx.AsyncClient, Settings],
) -> None:
    api, full = full_disk_api
    _, key = await make_partner(db, crypto, pgp)
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, [rec("r1", "alice", 5)]))
    r = await api.post(
        "/api/v1/partners/ACME/points-files",
        params={"name": NAME},
        content=enc.read_bytes(),
        headers={"X-API-Key": key},
    )
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("points-storage-full")
    assert "INCENTIVE_POINTS_MIN_FREE_BYTES" in r.json()["detail"]
    async with db.unit_of_work() as s:
        assert await s.scalar(select(func.count()).select_from(PointsFile)) == 0
    inbound = storage.work_root(full) / "inbound"
    assert not inbound.exists() or list(inbound.iterdir()) == []


async def test_stages_wait_while_the_disk_is_nearly_full(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, [rec("r1", "alice", 5)]))
    file_id = await _receive(db, quiet_settings, enc)
    full = quiet_settings.model_copy(update={"points_min_free_bytes": 2**62})
    with pytest.raises(TimeoutError):
        await run_pipeline_for(db, full, seconds=2)
    waiting = await file_row(db, file_id)
    assert waiting.state == "received"  # kept for retry, nothing half done
    assert "free" in waiting.stage_error
    assert waiting.stage_attempts == 0  # not the file's fault
    assert waiting.answer_name is None
    assert _work_files(quiet_settings) == []
    assert storage.inbound_path(quiet_settings, file_id).exists()
    # space again: it goes through as if nothing happened
    async with db.unit_of_work() as s:
        await s.execute(
            update(PointsFile).where(PointsFile.id == file_id).values(next_attempt_at=None)
        )
    await run_pipeline(db, quiet_settings)
    done = await file_row(db, file_id)
    assert (done.state, done.ok_count) == ("delivered", 1)
    assert await member_balances(db) == {"alice": 5}


async def run_pipeline_for(db: Database, settings: Settings, *, seconds: float) -> None:
    pipeline = PointsPipeline(db, settings)
    try:
        await pipeline.run_until_done(timeout_s=seconds)
    finally:
        await pipeline.aclose()


# ------------------------------------------------------------------ item 2: never stuck


async def test_points_beyond_64_bits_are_invalid_points_not_a_stuck_file(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    """Two records of 2^62 (trailer sum 2^63) and one of 2^64 + 1: each is INVALID_POINTS with
    its exact value echoed, the trailer checked with unbounded integers, the others credited."""
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "bob"])
    records = [
        rec("big1", "alice", 2**62),
        rec("ok1", "bob", 7),
        rec("big2", "alice", 2**62),
        rec("huge", "bob", 2**64 + 1),
    ]
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records))
    file_id = await _receive(db, quiet_settings, enc)
    await run_pipeline(db, quiet_settings)
    done = await file_row(db, file_id)
    assert done.state == "delivered"
    assert done.points_total is None  # 2^63 + 2^64 + 8 does not fit a BIGINT
    assert done.answer_name is not None
    results, totals = feedback_of(
        pgp, storage.answer_path(quiet_settings, file_id, done.answer_name)
    )
    assert [(r.record_id, r.points, r.status, r.reason_code) for r in results] == [
        ("big1", 2**62, RecordStatus.FAILED, RecordReason.INVALID_POINTS),
        ("ok1", 7, RecordStatus.OK, None),
        ("big2", 2**62, RecordStatus.FAILED, RecordReason.INVALID_POINTS),
        ("huge", 2**64 + 1, RecordStatus.FAILED, RecordReason.INVALID_POINTS),
    ]
    assert (totals.ok_count, totals.failed_count, totals.points_credited) == (1, 3, 7)
    assert await member_balances(db) == {"bob": 7}


async def test_a_trailer_off_by_one_beyond_64_bits_is_incomplete(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    body = (
        f"H|ACME|1|{NOW.isoformat()}|1\n"
        f"D|a|alice|{2**62}|{NOW.isoformat()}|\nD|b|alice|{2**62}|{NOW.isoformat()}|\n"
        f"T|2|{2**63 + 1}\n"
    )
    plain = tmp_path / "p.txt"
    plain.write_text(body)
    file_id = await _receive(db, quiet_settings, encrypt(pgp, plain))
    await run_pipeline(db, quiet_settings)
    done = await file_row(db, file_id)
    assert (done.state, done.reason_code) == ("delivered", "INCOMPLETE")
    assert str(2**63) in done.reason_detail


async def test_a_stage_that_keeps_failing_ends_the_file_with_an_answer(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    """Decrypting fails every time (the work file's place is taken by a directory, a real
    OSError): after ``points_stage_attempts`` tries the file is rejected with a reason and the
    partner gets its exception file; nothing is credited."""
    settings = quiet_settings.model_copy(
        update={"points_stage_attempts": 3, "points_stage_retry_seconds": 0.05}
    )
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, [rec("r1", "alice", 5)]))
    file_id = await _receive(db, settings, enc)
    blocker = storage.plain_path(settings, file_id).with_name(f"{file_id}.txt.partial")
    blocker.mkdir(parents=True)
    await run_pipeline(db, settings)
    done = await file_row(db, file_id)
    assert (done.state, done.reason_code) == ("delivered", "DECRYPT_FAILED")
    assert "after 3 attempts" in done.reason_detail
    assert done.answer_name is not None
    report = exception_of(pgp, storage.answer_path(settings, file_id, done.answer_name))
    assert report.reason_code is RejectReason.DECRYPT_FAILED
    assert "nothing in it was credited" in report.detail
    assert await member_balances(db) == {}
    assert await transfer_count(db) == 0


# ------------------------------------------------------------------ item 3: one bad record


async def test_a_record_whose_key_is_taken_fails_alone(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    """An API batch transfer took the idempotency key of record r2 (other content): only r2
    fails (CREDIT_FAILED), its neighbours in the batch are credited, and the partner's file
    never shows our internal key."""
    partner_id, _ = await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "bob", "carol"])
    async with db.unit_of_work() as s:
        funding = (await service.points_settings(s, partner_id)).funding_account_id
        assert funding is not None
        users = await ledger.open_accounts(
            s, owner_type="user", owner_ids=[await _user_id(s, "carol")], asset="POINTS"
        )
        await ledger.batch_transfer(
            s,
            [
                ledger.TransferItem(
                    idempotency_key="partner:ACME:r2",
                    debit_account_id=funding,
                    credit_account_id=next(iter(users.values())),
                    amount=1,
                    kind="api_batch",
                )
            ],
        )
    records = [rec("r1", "alice", 10), rec("r2", "bob", 20), rec("r3", "alice", 30)]
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records))
    file_id = await _receive(db, quiet_settings, enc)
    await run_pipeline(db, quiet_settings)
    done = await file_row(db, file_id)
    assert done.answer_name is not None
    path = storage.answer_path(quiet_settings, file_id, done.answer_name)
    results, totals = feedback_of(pgp, path)
    assert [(r.record_id, r.status, r.reason_code) for r in results] == [
        ("r1", RecordStatus.OK, None),
        ("r2", RecordStatus.FAILED, RecordReason.CREDIT_FAILED),
        ("r3", RecordStatus.OK, None),
    ]
    assert totals.points_credited == 40
    assert all("partner:" not in r.detail for r in results)
    assert b"partner:ACME" not in decrypt_answer(pgp, path)
    assert await member_balances(db) == {"alice": 40, "bob": 0, "carol": 1}
    assert await transfer_count(db) == 3


async def _user_id(session: AsyncSession, username: str) -> str:
    return str(await session.scalar(select(User.id).where(User.username == username)))


async def test_a_record_past_the_balance_limit_fails_alone(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    """Bob's balance sits 15 below BIGINT's maximum: his record of 20 fails (CREDIT_FAILED,
    the ledger's balance limit), his record of 5 and alice's records in the same batch are
    credited, and no balance leaves BIGINT. On PostgreSQL the batch is first tried set-based
    (``ledger.staged_credits``); its refusal must isolate the record, not fail the batch."""
    partner_id, _ = await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "bob"])
    async with db.unit_of_work() as s:
        source = await ledger.open_account(
            s, owner_type="platform", owner_id="edge", asset="POINTS", allow_negative=True
        )
        bob = next(
            iter(
                (
                    await ledger.open_accounts(
                        s, owner_type="user", owner_ids=[await _user_id(s, "bob")], asset="POINTS"
                    )
                ).values()
            )
        )
    edge = BALANCE_MAX - 15
    amounts = [ledger.MAX_AMOUNT] * (edge // ledger.MAX_AMOUNT) + [edge % ledger.MAX_AMOUNT]
    for start in range(0, len(amounts), 4000):
        async with db.unit_of_work() as s:
            await ledger.batch_transfer(
                s,
                [
                    ledger.TransferItem(f"edge:{start + i}", source.id, bob, amount, "test_edge")
                    for i, amount in enumerate(amounts[start : start + 4000])
                ],
            )
    records = [
        rec("r1", "alice", 10),
        rec("r2", "bob", 20),
        rec("r3", "bob", 5),
        rec("r4", "alice", 30),
    ]
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records))
    file_id = await _receive(db, quiet_settings, enc)
    await run_pipeline(db, quiet_settings)
    done = await file_row(db, file_id)
    assert done.answer_name is not None
    results, totals = feedback_of(
        pgp, storage.answer_path(quiet_settings, file_id, done.answer_name)
    )
    assert [(r.record_id, r.status, r.reason_code) for r in results] == [
        ("r1", RecordStatus.OK, None),
        ("r2", RecordStatus.FAILED, RecordReason.CREDIT_FAILED),
        ("r3", RecordStatus.OK, None),
        ("r4", RecordStatus.OK, None),
    ]
    assert totals.points_credited == 45
    assert await member_balances(db) == {"alice": 40, "bob": BALANCE_MAX - 10}
