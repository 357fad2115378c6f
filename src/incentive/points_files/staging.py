"""Stages from ``received`` to ``validated``: decrypt, stage, validate (or reject the file).

- Decrypting checks the partner's signature and writes the plain file to the work directory.
- Staging streams that file (never whole in memory) in chunks of
  ``settings.points_stage_chunk`` records, each in its own transaction. On PostgreSQL the
  chunk's lines go as they are to COPY and SQL computes each record's values and verdict
  (``copy_staging``); a file off that path, and every file on SQLite, is parsed by the reader
  and each chunk validated in Python against the members and the credited record ids and
  written in one statement (COPY on PostgreSQL, executemany on SQLite). A restart of staging
  deletes the partial rows and starts over.
- Validating flags record ids repeated inside the file (the first occurrence is credited).

A whole-file problem (``FileRejected``) moves the file to ``rejected`` with its reason; its
records are deleted and its duplicate guards released.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.db import utcnow
from incentive.points_files import copy_staging, metrics, repository, storage
from incentive.points_files.copy_staging import Staged
from incentive.points_files.errors import FileRejected
from incentive.points_files.format import (
    INT64_MAX,
    DetailRecord,
    PointsFileReader,
    RecordReason,
    RejectReason,
    sanitize_detail,
)
from incentive.points_files.models import RECORD_COLUMNS, RECORDS, PointsFile, PointsRecord
from incentive.points_files.repository import FileContext
from incentive.points_files.worker import Worker

log = logging.getLogger(__name__)

FUTURE_TOLERANCE = timedelta(minutes=10)


async def decrypt(worker: Worker, file_id: str) -> None:
    """``received`` -> ``decrypted`` (or ``rejected``: not ours to read, or not signed)."""
    async with worker.db.unit_of_work() as s:
        ctx = await repository.file_context(s, file_id)
    try:
        await _decrypt_to_work(worker, ctx)
    except FileRejected as exc:
        await reject(worker, file_id, "received", exc.reason_code, exc.exception_detail)
        return
    worker.crash.hit("decrypted")
    async with worker.db.unit_of_work() as s:
        await repository.advance(s, worker.id, file_id, "received", "decrypted")


async def _decrypt_to_work(worker: Worker, ctx: FileContext) -> None:
    out = storage.plain_path(worker.settings, ctx.id)
    out.parent.mkdir(parents=True, exist_ok=True)
    if ctx.fingerprint is None:
        raise FileRejected(RejectReason.BAD_SIGNATURE, "no OpenPGP key registered for partner")
    storage.ensure_free_space(worker.settings)
    await asyncio.to_thread(
        functools.partial(
            worker.crypto().decrypt_and_verify,
            storage.inbound_path(worker.settings, ctx.id),
            out,
            ctx.fingerprint,
            max_plain_bytes=ctx.max_plain_bytes,
        )
    )


async def stage(worker: Worker, file_id: str) -> None:
    """``decrypted`` -> ``staged``: every record stored with its first verdict."""
    async with worker.db.unit_of_work() as s:
        ctx = await repository.file_context(s, file_id)
        await repository.fence_file(s, worker.id, file_id, worker.lease_until())
        leftover = await s.scalar(
            select(PointsRecord.line_no).where(PointsRecord.file_id == file_id).limit(1)
        )
        if leftover is not None:  # a crashed attempt's partial rows
            await s.execute(delete(PointsRecord).where(PointsRecord.file_id == file_id))
    plain = storage.plain_path(worker.settings, file_id)
    if not plain.exists():
        try:
            await _decrypt_to_work(worker, ctx)
        except FileRejected as exc:
            await reject(worker, file_id, "decrypted", exc.reason_code, exc.exception_detail)
            return
    try:
        staged = None
        if not worker.db.is_sqlite:
            staged = await _stage_by_copy(worker, ctx, plain)
        if staged is None:
            staged = await _stage_by_reader(worker, ctx, plain)
    except FileRejected as exc:
        await reject(worker, file_id, "decrypted", exc.reason_code, exc.exception_detail)
        return
    worker.crash.hit("staged")
    async with worker.db.unit_of_work() as s:
        await repository.advance(
            s,
            worker.id,
            file_id,
            "decrypted",
            "staged",
            record_count=staged.record_count,
            points_total=staged.points_sum if staged.points_sum <= INT64_MAX else None,
            last_line=staged.last_line,
            failed_count=staged.failed,
            staged_at=utcnow(),
        )
    plain.unlink(missing_ok=True)
    metrics.RECORDS_STAGED.inc(staged.record_count)


def _open_reader(ctx: FileContext, stream: BinaryIO) -> PointsFileReader:
    return PointsFileReader(
        stream,
        ctx.code,
        expected_file_seq=ctx.file_seq,
        max_records=ctx.max_records,
        detect_duplicates=False,
    )


async def _stage_by_copy(worker: Worker, ctx: FileContext, plain: Path) -> Staged | None:
    """PostgreSQL: the file's lines straight into COPY (``copy_staging``), chunk by chunk;
    ``None`` (its partial rows deleted) when the file is off that path."""
    staged = Staged()
    chunk_size = worker.settings.points_stage_chunk
    now = utcnow()
    oldest = now - timedelta(days=ctx.stale_after_days)
    newest = now + FUTURE_TOLERANCE
    try:
        with plain.open("rb") as stream:
            _open_reader(ctx, stream)  # the header, checked as always
            while True:
                lines = copy_staging.read_lines(stream, chunk_size)
                trailer = lines.pop() if lines and lines[-1].startswith(b"T|") else None
                if trailer is None and len(lines) < chunk_size:
                    raise copy_staging.OffTheHappyPath  # no trailer: the reader says why
                if lines:
                    data = copy_staging.chunk_of(lines)
                    if staged.record_count + len(lines) > ctx.max_records:
                        raise copy_staging.OffTheHappyPath
                    async with worker.db.unit_of_work() as s:
                        await repository.fence_file(s, worker.id, ctx.id, worker.lease_until())
                        count, points, failed = await copy_staging.stage_chunk(
                            s, ctx, data, staged.last_line + 1, oldest, newest
                        )
                    staged.record_count += count
                    staged.points_sum += points
                    staged.failed += failed
                    staged.last_line += count
                    worker.crash.hit("staging")
                if trailer is not None:
                    copy_staging.check_trailer(trailer, staged, stream.read(1))
                    return staged
    except copy_staging.OffTheHappyPath:
        async with worker.db.unit_of_work() as s:
            await repository.fence_file(s, worker.id, ctx.id, worker.lease_until())
            await s.execute(delete(PointsRecord).where(PointsRecord.file_id == ctx.id))
        return None


async def _stage_by_reader(worker: Worker, ctx: FileContext, plain: Path) -> Staged:
    """Every record parsed and judged in Python (``PointsFileReader``), chunk by chunk."""
    staged = Staged()
    chunk_size = worker.settings.points_stage_chunk
    with plain.open("rb") as stream:
        reader = _open_reader(ctx, stream)
        chunk: list[DetailRecord] = []
        for record in reader:
            chunk.append(record)
            if len(chunk) >= chunk_size:
                staged.failed += await _stage_chunk(worker, ctx, chunk)
                staged.last_line = chunk[-1].line_no
                chunk = []
                worker.crash.hit("staging")
        if chunk:
            staged.failed += await _stage_chunk(worker, ctx, chunk)
            staged.last_line = chunk[-1].line_no
    staged.record_count = reader.record_count
    staged.points_sum = reader.points_sum
    return staged


async def _stage_chunk(worker: Worker, ctx: FileContext, chunk: Sequence[DetailRecord]) -> int:
    """Validate and store one chunk of records in one transaction; returns the failures."""
    now = utcnow()
    oldest = now - timedelta(days=ctx.stale_after_days)
    newest = now + FUTURE_TOLERANCE
    async with worker.db.unit_of_work() as s:
        await repository.fence_file(s, worker.id, ctx.id, worker.lease_until())
        members = await auth_service.members_by_username(s, {r.member_id for r in chunk})
        credited = await repository.credited_ids(s, ctx.partner_id, [r.record_id for r in chunk])
        rows: list[tuple[Any, ...]] = []
        failed = 0
        for r in chunk:
            member = members.get(r.member_id)
            reason: RecordReason | None = None
            detail = ""
            if r.record_id in credited:
                reason, detail = RecordReason.DUPLICATE_RECORD, "record_id already credited"
            elif member is None:
                reason, detail = RecordReason.UNKNOWN_MEMBER, "no member with this member_id"
            elif member.blocked:
                reason, detail = RecordReason.MEMBER_BLOCKED, "the member is blocked"
            elif r.points > ctx.max_points:
                reason = RecordReason.INVALID_POINTS
                detail = f"points over the per-record limit {ctx.max_points}"
            elif r.txn_time < oldest:
                reason = RecordReason.STALE_TXN
                detail = f"txn_time older than {ctx.stale_after_days} days"
            elif r.txn_time > newest:
                reason, detail = RecordReason.STALE_TXN, "txn_time in the future"
            if reason is not None:
                failed += 1
            rows.append(
                (
                    ctx.id,
                    r.line_no,
                    r.record_id,
                    r.member_id,
                    # a value beyond 64 bits (never credited) is kept as its digits
                    r.points if r.points <= INT64_MAX else None,
                    None if r.points <= INT64_MAX else str(r.points),
                    r.txn_time.astimezone(UTC),
                    r.memo,
                    member.user_id if member is not None else None,
                    "valid" if reason is None else "failed",
                    None if reason is None else str(reason),
                    detail,
                )
            )
        await _insert_records(s, rows)
    return failed


async def _insert_records(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(
            insert(RECORDS),
            [dict(zip(RECORD_COLUMNS, r, strict=True)) for r in rows],
        )
        return
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    await driver.copy_records_to_table("points_records", records=rows, columns=list(RECORD_COLUMNS))


async def validate(worker: Worker, file_id: str) -> None:
    """``staged`` -> ``validated``: flag record ids repeated inside the file (the first
    occurrence is the one credited)."""
    async with worker.db.unit_of_work() as s:
        await repository.fence_file(s, worker.id, file_id, worker.lease_until())
        result = await s.execute(
            text(
                """
                UPDATE points_records SET state = 'failed', reason = 'DUPLICATE_RECORD',
                    detail = 'record_id repeated in this file'
                WHERE file_id = :f AND state = 'valid' AND line_no IN (
                    SELECT line_no FROM (
                        SELECT line_no, row_number() OVER (
                            PARTITION BY record_id ORDER BY line_no) AS rn
                        FROM points_records WHERE file_id = :f
                    ) AS numbered WHERE rn > 1
                )
                """
            ),
            {"f": file_id},
        )
        repeated = int(getattr(result, "rowcount", 0) or 0)
        worker.crash.hit("validated")
        await repository.advance(
            s,
            worker.id,
            file_id,
            "staged",
            "validated",
            failed_count=PointsFile.failed_count + repeated,
        )


async def reject(
    worker: Worker, file_id: str, from_state: str, reason: RejectReason, detail: str
) -> None:
    """``from_state`` -> ``rejected``: its records deleted, its duplicate guards released."""
    async with worker.db.unit_of_work() as s:
        await repository.fence_file(s, worker.id, file_id, worker.lease_until())
        await s.execute(delete(PointsRecord).where(PointsRecord.file_id == file_id))
        await repository.advance(
            s,
            worker.id,
            file_id,
            from_state,
            "rejected",
            reason_code=str(reason),
            reason_detail=sanitize_detail(detail),
            accepted_seq=None,
            accepted_sha256=None,
            record_count=0,
            points_total=0,
            failed_count=0,
        )
    storage.plain_path(worker.settings, file_id).unlink(missing_ok=True)
    log.info("points file rejected", extra={"file_id": file_id, "reason": str(reason)})
