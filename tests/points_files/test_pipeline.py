"""The pipeline end to end on the test's engine: the partner is the gpg command line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from incentive.app import create_app
from incentive.db import Database
from incentive.points_files import intake, service, storage
from incentive.points_files.answer_format import RecordStatus
from incentive.points_files.crypto import PointsCrypto
from incentive.points_files.format import RecordReason, RejectReason
from incentive.points_files.models import PointsFile, PointsRecord
from incentive.points_files.pipeline import PointsPipeline
from incentive.settings import Settings
from tests.points_files.kit import (
    NOW,
    Pgp,
    encrypt,
    exception_of,
    feedback_of,
    file_row,
    local_transport,
    make_members,
    make_partner,
    member_balances,
    plain_file,
    points_balance_total,
    rec,
    run_pipeline,
    transfer_count,
)


@pytest.fixture
async def api(quiet_settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(quiet_settings, db)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def _upload(api: httpx.AsyncClient, key: str, body: bytes, name: str) -> Any:
    r = await api.post(
        "/api/v1/partners/ACME/points-files",
        params={"name": name},
        content=body,
        headers={"X-API-Key": key},
    )
    assert r.status_code == 202, r.text
    return r.json()


async def test_http_upload_to_feedback_with_gpg_cli(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    _, key = await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "bob"])
    plain = plain_file(
        tmp_path / "p.txt",
        "ACME",
        1,
        [rec("r1", "alice", 100), rec("r2", "bob", 250), rec("r3", "nobody", 5)],
    )
    accepted = await _upload(
        api, key, encrypt(pgp, plain).read_bytes(), "POINTS_ACME_20250109_1.txt.pgp"
    )
    assert accepted["state"] == "received"
    not_ready = await api.get(
        f"/api/v1/points-files/{accepted['id']}/feedback", headers={"X-API-Key": key}
    )
    assert not_ready.status_code == 409
    await run_pipeline(db, quiet_settings)

    progress = (
        await api.get(f"/api/v1/points-files/{accepted['id']}", headers={"X-API-Key": key})
    ).json()
    assert progress["state"] == "delivered"
    assert progress["records"] == {"total": 3, "credited": 2, "failed": 1, "pending": 0}
    assert progress["batches_done"] == progress["batches_total"] == 1

    answer = await api.get(
        f"/api/v1/points-files/{accepted['id']}/feedback", headers={"X-API-Key": key}
    )
    assert answer.status_code == 200
    path = tmp_path / "FEEDBACK.pgp"
    path.write_bytes(answer.content)
    results, totals = feedback_of(pgp, path)
    assert [(r.record_id, r.status, r.reason_code) for r in results] == [
        ("r1", RecordStatus.OK, None),
        ("r2", RecordStatus.OK, None),
        ("r3", RecordStatus.FAILED, RecordReason.UNKNOWN_MEMBER),
    ]
    assert totals.points_credited == 350
    assert await member_balances(db) == {"alice": 100, "bob": 250}


async def test_local_inbox_and_outbox(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    root = await local_transport(db, tmp_path)
    plain = plain_file(tmp_path / "p.txt", "ACME", 7, [rec("a1", "alice", 10)])
    encrypt(pgp, plain).rename(root / "in" / "POINTS_ACME_20250109_7.txt.pgp")
    await run_pipeline(db, quiet_settings)  # nothing yet: run_until_done does not poll
    pipeline = PointsPipeline(db, quiet_settings)
    assert await pipeline.poll_inboxes() == 1
    assert [p.name for p in (root / "in").iterdir() if p.is_file()] == []
    await pipeline.run_until_done(timeout_s=60)
    await pipeline.aclose()
    results, totals = feedback_of(pgp, root / "out" / "FEEDBACK_POINTS_ACME_20250109_7.txt.pgp")
    assert totals.ok_count == 1
    assert (root / "in" / "archive" / "POINTS_ACME_20250109_7.txt.pgp").exists()


# ------------------------------------------------------------------ per-record reasons


async def _one_file(
    db: Database,
    settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    records: list[Any],
    seq: int = 1,
) -> tuple[list[Any], Any]:
    plain = plain_file(tmp_path / f"p{seq}.txt", "ACME", seq, records)
    enc = encrypt(pgp, plain)
    async with db.unit_of_work() as s:
        who = await intake.sender(s, "ACME")
    row = await intake.receive(
        db,
        settings,
        who,
        f"POINTS_ACME_20250109_{seq}.txt.pgp",
        storage.file_chunks(enc),
        source="http",
    )
    await run_pipeline(db, settings)
    done = await file_row(db, row.id)
    assert done.state == "delivered"
    assert done.answer_name is not None
    return feedback_of(pgp, storage.answer_path(settings, row.id, done.answer_name))


@pytest.mark.parametrize(
    ("reason", "records", "balances"),
    [
        (RecordReason.UNKNOWN_MEMBER, [rec("x1", "ghost", 10)], {}),
        (RecordReason.MEMBER_BLOCKED, [rec("x1", "blocked1", 10)], {}),
        (RecordReason.INVALID_POINTS, [rec("x1", "alice", 1001)], {}),
        (RecordReason.STALE_TXN, [rec("x1", "alice", 10, age=timedelta(days=40))], {}),
        (RecordReason.STALE_TXN, [rec("x1", "alice", 10, age=-timedelta(days=1))], {}),
        (
            RecordReason.DUPLICATE_RECORD,
            [rec("x0", "alice", 10), rec("x0", "alice", 12)],
            {"alice": 10},
        ),
    ],
    ids=["unknown-member", "blocked", "invalid-points", "stale-old", "stale-future", "dup-in-file"],
)
async def test_record_reason(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    reason: RecordReason,
    records: list[Any],
    balances: dict[str, int],
) -> None:
    await make_partner(db, crypto, pgp, max_points_per_record=1000, stale_after_days=30)
    await make_members(db, ["alice"])
    await make_members(db, ["blocked1"], blocked=True)
    results, totals = await _one_file(db, quiet_settings, crypto, pgp, tmp_path, records)
    assert results[-1].status is RecordStatus.FAILED
    assert results[-1].reason_code is reason
    assert totals.record_count == len(records)
    # expected from the input, not from the feedback: the first x0 only, to alice
    assert await member_balances(db) == balances
    assert totals.points_credited == sum(balances.values())
    assert await transfer_count(db) == len(balances)


async def test_duplicate_record_across_files(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    first, _ = await _one_file(db, quiet_settings, crypto, pgp, tmp_path, [rec("k1", "alice", 5)])
    assert first[0].status is RecordStatus.OK
    second, totals = await _one_file(
        db, quiet_settings, crypto, pgp, tmp_path, [rec("k1", "alice", 5), rec("k2", "alice", 6)], 2
    )
    assert second[0].reason_code is RecordReason.DUPLICATE_RECORD
    assert second[1].status is RecordStatus.OK
    assert await member_balances(db) == {"alice": 11}
    assert await transfer_count(db) == 2


# ------------------------------------------------------------------ whole-file reasons


async def _rejected(
    db: Database,
    settings: Settings,
    pgp: Pgp,
    enc: Path,
    name: str,
    expected: RejectReason,
) -> str:
    async with db.unit_of_work() as s:
        who = await intake.sender(s, "ACME")
    before = await points_balance_total(db), await transfer_count(db)
    row = await intake.receive(db, settings, who, name, storage.file_chunks(enc), source="http")
    await run_pipeline(db, settings)
    done = await file_row(db, row.id)
    assert (done.state, done.reason_code) == ("delivered", str(expected)), done.reason_detail
    assert done.answer_name is not None
    assert done.answer_name.startswith("EXCEPTION_")
    report = exception_of(pgp, storage.answer_path(settings, row.id, done.answer_name))
    assert report.reason_code is expected
    assert (await points_balance_total(db), await transfer_count(db)) == before
    return report.detail


HEAD = b"H|ACME|1|2025-01-09T18:49:00+08:00|1\n"
GOOD = [rec("g1", "alice", 10), rec("g2", "alice", 20)]


@pytest.mark.parametrize(
    ("reason", "body"),
    [
        (RejectReason.INCOMPLETE, HEAD + b"D|r1|alice|1|2025-01-09T10:00:00+08:00|\n"),
        (RejectReason.BAD_HEADER, b"H|OTHER|1|2025-01-09T18:49:00+08:00|1\nT|0|0\n"),
        (RejectReason.BAD_FORMAT, HEAD + b"D|r1|alice|ten|2025-01-09T10:00:00+08:00|\nT|1|10\n"),
    ],
    ids=["incomplete", "bad-header", "bad-format"],
)
async def test_file_reason_from_content(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    reason: RejectReason,
    body: bytes,
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    plain = tmp_path / "p.txt"
    plain.write_bytes(body)
    detail = await _rejected(
        db, quiet_settings, pgp, encrypt(pgp, plain), "POINTS_ACME_20250109_1.txt.pgp", reason
    )
    if reason is RejectReason.BAD_FORMAT:
        assert "line 2" in detail


async def test_decrypt_failed(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    junk = tmp_path / "junk.pgp"
    junk.write_bytes(b"this is not an OpenPGP message\n" * 10)
    await _rejected(
        db, quiet_settings, pgp, junk, "POINTS_ACME_20250109_1.txt.pgp", RejectReason.DECRYPT_FAILED
    )


@pytest.mark.parametrize("how", ["unsigned", "stranger"])
async def test_bad_signature(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    how: str,
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    plain = plain_file(tmp_path / "p.txt", "ACME", 1, GOOD)
    enc = (
        encrypt(pgp, plain, sign=False)
        if how == "unsigned"
        else encrypt(pgp, plain, signer=pgp.stranger)
    )
    await _rejected(
        db, quiet_settings, pgp, enc, "POINTS_ACME_20250109_1.txt.pgp", RejectReason.BAD_SIGNATURE
    )


async def test_duplicate_file_by_seq_and_by_content(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    results, _ = await _one_file(db, quiet_settings, crypto, pgp, tmp_path, GOOD)
    assert all(r.status is RecordStatus.OK for r in results)
    # another file with the same seq
    other = encrypt(pgp, plain_file(tmp_path / "o.txt", "ACME", 1, [rec("n1", "alice", 1)]))
    await _rejected(
        db,
        quiet_settings,
        pgp,
        other,
        "POINTS_ACME_20250110_1.txt.pgp",
        RejectReason("DUPLICATE_FILE"),
    )
    # the very same bytes again under another name
    again = tmp_path / "p1.txt.pgp"
    async with db.unit_of_work() as s:
        who = await intake.sender(s, "ACME")
    name = "POINTS_ACME_20250111_9.txt.pgp"
    row = await intake.receive(
        db, quiet_settings, who, name, storage.file_chunks(again), source="http"
    )
    assert (row.state, row.reason_code) == ("rejected", "DUPLICATE_FILE")
    await run_pipeline(db, quiet_settings)
    assert await member_balances(db) == {"alice": 30}


async def test_unknown_partner(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "NOBANK", 1, GOOD))
    await _rejected(
        db,
        quiet_settings,
        pgp,
        enc,
        "POINTS_NOBANK_20250109_1.txt.pgp",
        RejectReason.UNKNOWN_PARTNER,
    )


async def test_too_large(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp, max_file_bytes=200)
    await make_members(db, ["alice"])
    records = [rec(f"t{i}", "alice", 1) for i in range(50)]
    enc = encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records))
    assert enc.stat().st_size > 200
    await _rejected(
        db, quiet_settings, pgp, enc, "POINTS_ACME_20250109_1.txt.pgp", RejectReason.TOO_LARGE
    )


# ------------------------------------------------------------------ listing and delivery


async def test_list_pages_filters_and_rules(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    api: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    _, key = await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    headers = {"X-API-Key": key}
    ids = []
    for seq in (1, 2, 3):
        plain = plain_file(tmp_path / f"p{seq}.txt", "ACME", seq, [rec(f"l{seq}", "alice", 1)])
        body = encrypt(pgp, plain).read_bytes()
        ids.append((await _upload(api, key, body, f"POINTS_ACME_20250109_{seq}.txt.pgp"))["id"])
    await run_pipeline(db, quiet_settings)
    plain = plain_file(tmp_path / "p4.txt", "ACME", 4, [rec("l4", "alice", 1)])
    body = encrypt(pgp, plain).read_bytes()
    ids.append((await _upload(api, key, body, "POINTS_ACME_20250109_4.txt.pgp"))["id"])

    first = (await api.get("/api/v1/points-files", params={"limit": 3}, headers=headers)).json()
    assert [f["id"] for f in first["items"]] == ids[::-1][:3]  # newest first
    assert first["next_cursor"]
    rest = (
        await api.get(
            "/api/v1/points-files",
            params={"limit": 3, "cursor": first["next_cursor"]},
            headers=headers,
        )
    ).json()
    assert [f["id"] for f in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None
    waiting = (
        await api.get(
            "/api/v1/points-files", params={"state": "received", "partner": "ACME"}, headers=headers
        )
    ).json()
    assert [(f["id"], f["state"]) for f in waiting["items"]] == [(ids[3], "received")]

    other = await api.get("/api/v1/points-files", params={"partner": "OTHER"}, headers=headers)
    assert other.status_code == 403
    bad = await api.get("/api/v1/points-files", params={"state": "lost"}, headers=headers)
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "state" in bad.text


async def test_delivery_is_retried_until_the_outbox_takes_it(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice"])
    root = tmp_path / "acme"
    (root / "in").mkdir(parents=True)
    (root / "out").write_bytes(b"")  # the outbox path is a file: delivery fails
    async with db.unit_of_work() as s:
        await service.set_partner_transport(
            s, "ACME", inbox_url=(root / "in").as_uri(), outbox_url=(root / "out").as_uri()
        )
    name = "POINTS_ACME_20250109_9.txt.pgp"
    plain = plain_file(tmp_path / "p.txt", "ACME", 9, [rec("d1", "alice", 10)])
    encrypt(pgp, plain).rename(root / "in" / name)
    pipeline = PointsPipeline(db, quiet_settings)
    try:
        assert await pipeline.poll_inboxes() == 1
        while await pipeline.run_once():
            pass
        async with db.unit_of_work() as s:
            row = (await s.execute(select(PointsFile))).scalar_one()
        assert row.state == "feedback_written"
        assert row.delivery_attempts == 1
        assert row.delivery_error
        (root / "out").unlink()  # the partner fixes its side
        await pipeline.run_until_done(timeout_s=30)  # retried after the backoff (2 s)
    finally:
        await pipeline.aclose()
    done = await file_row(db, row.id)
    assert (done.state, done.delivery_attempts, done.delivery_error) == ("delivered", 2, "")
    assert [p.name for p in (root / "out").iterdir()] == [f"FEEDBACK_{name}"]
    _, totals = feedback_of(pgp, root / "out" / f"FEEDBACK_{name}")
    assert totals.ok_count == 1


async def test_every_value_is_staged_as_the_reader_reads_it(
    db: Database, quiet_settings: Settings, crypto: PointsCrypto, pgp: Pgp, tmp_path: Path
) -> None:
    """Lines written by hand in the forms the format allows (CRLF, leading zeros, points past
    64 bits, every offset form, a fraction, tab, backslash, quotes and commas in the memo, a
    non-ASCII member id): on PostgreSQL they go through COPY, on SQLite through the reader,
    and both store and answer exactly what the reader parses."""
    await make_partner(db, crypto, pgp)
    await make_members(db, ["alice", "zoë"])
    at = (NOW - timedelta(hours=2)).replace(microsecond=0)
    times = [
        at.astimezone(timezone(timedelta(hours=8))).isoformat(),
        at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        at.astimezone(timezone(timedelta(hours=5))).strftime("%Y-%m-%dT%H:%M:%S+05"),
        at.astimezone(timezone(-timedelta(hours=5, minutes=30))).strftime(
            "%Y-%m-%dT%H:%M:%S.5-0530"
        ),
        at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M+00:00"),
    ]
    lines = [
        f'D|a1|alice|007|{times[0]}|tab\there \\ back "quoted", comma\r\n',
        f"D|a2|zoë|12|{times[1]}|\n",
        f"D|a3|alice|{'9' * 30}|{times[2]}|huge\n",
        f"D|a4|alice|0000000000000000000000000005|{times[3]}|x\n",
        f"D|a5|nobody|3|{times[4]}|y\n",
        f"D|a1|alice|4|{times[0]}|repeat\n",
    ]
    total = 7 + 12 + int("9" * 30) + 5 + 3 + 4
    text = f"H|ACME|1|{NOW.isoformat()}|1\n" + "".join(lines) + f"T|{len(lines)}|{total}\n"
    plain = tmp_path / "p.txt"
    plain.write_bytes(text.encode())
    results, totals = await _one_file_from(db, quiet_settings, pgp, plain)
    assert [(r.record_id, r.points, r.status, r.reason_code) for r in results] == [
        ("a1", 7, RecordStatus.OK, None),
        ("a2", 12, RecordStatus.OK, None),
        ("a3", int("9" * 30), RecordStatus.FAILED, RecordReason.INVALID_POINTS),
        ("a4", 5, RecordStatus.OK, None),
        ("a5", 3, RecordStatus.FAILED, RecordReason.UNKNOWN_MEMBER),
        ("a1", 4, RecordStatus.FAILED, RecordReason.DUPLICATE_RECORD),
    ]
    assert totals.points_credited == 24
    assert await member_balances(db) == {"alice": 12, "zoë": 12}
    async with db.unit_of_work() as s:
        stored = (
            await s.execute(
                select(PointsRecord.line_no, PointsRecord.txn_time, PointsRecord.memo).order_by(
                    PointsRecord.line_no
                )
            )
        ).all()
    parsed = [line.rstrip("\r\n").split("|") for line in lines]
    assert [(n, t, m) for n, t, m in stored] == [
        (i + 2, datetime.fromisoformat(p[4]), p[5]) for i, p in enumerate(parsed)
    ]


async def _one_file_from(
    db: Database, settings: Settings, pgp: Pgp, plain: Path
) -> tuple[list[Any], Any]:
    async with db.unit_of_work() as s:
        who = await intake.sender(s, "ACME")
    row = await intake.receive(
        db,
        settings,
        who,
        "POINTS_ACME_20250109_1.txt.pgp",
        storage.file_chunks(encrypt(pgp, plain)),
        source="http",
    )
    await run_pipeline(db, settings)
    done = await file_row(db, row.id)
    assert done.answer_name is not None
    return feedback_of(pgp, storage.answer_path(settings, row.id, done.answer_name))
