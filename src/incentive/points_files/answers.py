"""Answering a file: write its feedback (``credited`` -> ``feedback_written``) or exception
file (``rejected`` -> ``exception_written``), then deliver it (-> ``delivered``).

The feedback file is written from the database in line order (one ``R`` per ``D``), streamed
(never whole in memory: ``COPY … TO STDOUT`` on PostgreSQL, chunks of ``FEEDBACK_CHUNK`` on
SQLite), encrypted and signed. Delivery puts the answer in the partner's
outbox, retried with backoff until the transport acknowledges; a partner without an outbox
downloads its answer over HTTP, so its file is delivered at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from incentive.db import utcnow
from incentive.points_files import metrics, repository, storage
from incentive.points_files.answer_format import (
    AnswerHeader,
    FeedbackTotals,
    RecordResult,
    RecordStatus,
    answer_header_line,
    trailer_line,
    write_exception,
    write_feedback,
)
from incentive.points_files.backends.transports import TransportOptions, connected
from incentive.points_files.errors import TransportError
from incentive.points_files.format import (
    RecordReason,
    RejectReason,
    exception_name,
    feedback_name,
    sanitize_detail,
)
from incentive.points_files.models import RECORDS, PointsRecord
from incentive.points_files.worker import Worker

log = logging.getLogger(__name__)

FEEDBACK_CHUNK = 10_000


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(300.0, 2.0 ** min(attempts, 10)))


async def _feedback_chunk(
    worker: Worker, file_id: str, after: int
) -> tuple[list[RecordResult], int]:
    """The results of the records after line ``after`` (at most ``FEEDBACK_CHUNK``) and the
    last line among them."""
    async with worker.db.unit_of_work() as s:
        rows = await s.execute(
            select(
                PointsRecord.line_no,
                PointsRecord.record_id,
                PointsRecord.member_id,
                PointsRecord.points,
                PointsRecord.points_text,
                PointsRecord.state,
                PointsRecord.reason,
                PointsRecord.detail,
            )
            .where(PointsRecord.file_id == file_id, PointsRecord.line_no > after)
            .order_by(PointsRecord.line_no)
            .limit(FEEDBACK_CHUNK)
        )
        out: list[RecordResult] = []
        last_line = after
        for line_no, record_id, member_id, stored, points_text, state, reason, detail in rows:
            points = int(stored) if stored is not None else int(str(points_text))
            if state == "credited":
                out.append(RecordResult(record_id, member_id, points, RecordStatus.OK))
            elif state == "failed":
                out.append(
                    RecordResult(
                        record_id,
                        member_id,
                        points,
                        RecordStatus.FAILED,
                        RecordReason(str(reason)),
                        detail,
                    )
                )
            else:
                raise RuntimeError(f"record {file_id}:{line_no} still {state} at feedback")
            last_line = int(line_no)
        return out, last_line


# The R lines as PostgreSQL writes them (``COPY … TO STDOUT``), in line order. Every field
# was checked when staged (ids, member ids) or written sanitised (details), and none holds a
# control character, so CSV with control characters as delimiter and quote never quotes one.
_FEEDBACK_LINES = """
    SELECT 'R|' || record_id || '|' || member_id || '|' || coalesce(points::text, points_text)
        || CASE WHEN state = 'credited' THEN '|OK||'
                ELSE '|FAILED|' || reason || '|' || detail END
    FROM points_records WHERE file_id = $1 ORDER BY line_no
"""


async def _feedback_by_copy(
    worker: Worker, file_id: str, header: AnswerHeader, plain: Path
) -> FeedbackTotals:
    """PostgreSQL: the feedback file streamed by ``COPY`` from the records (never whole in
    memory, nothing per record in Python), totals counted by the database."""
    async with worker.db.unit_of_work() as s:
        r = RECORDS.c
        credited = r.state == "credited"
        count, ok, failed, points, pending = (
            await s.execute(
                select(
                    func.count(),
                    func.count().filter(credited),
                    func.count().filter(r.state == "failed"),
                    func.coalesce(func.sum(r.points).filter(credited), 0),
                    func.min(r.line_no).filter(r.state.not_in(("credited", "failed"))),
                ).where(r.file_id == file_id)
            )
        ).one()
        if pending is not None:
            raise RuntimeError(f"record {file_id}:{pending} still not credited at feedback")
        totals = FeedbackTotals(int(count), int(ok), int(failed), int(points))
        raw = await (await s.connection()).get_raw_connection()
        driver: Any = raw.driver_connection
        with plain.open("wb") as out:
            out.write(answer_header_line(header))

            async def lines(data: bytes) -> None:
                out.write(data)

            await driver.copy_from_query(
                _FEEDBACK_LINES,
                file_id,
                output=lines,
                format="csv",
                delimiter="\x02",
                quote="\x01",
            )
            worker.crash.hit("feedback_line")
            out.write(trailer_line(totals))
            out.flush()
            os.fsync(out.fileno())
    return totals


async def write_feedback_file(worker: Worker, file_id: str) -> None:
    """``credited`` -> ``feedback_written``."""
    async with worker.db.unit_of_work() as s:
        ctx = await repository.file_context(s, file_id)
        await repository.fence_file(s, worker.id, file_id, worker.lease_until())
    if ctx.fingerprint is None:
        raise RuntimeError("partner key disappeared")
    storage.ensure_free_space(worker.settings)
    loop = asyncio.get_running_loop()
    header = AnswerHeader(ctx.code, ctx.file_seq, utcnow())
    plain = storage.answer_plain_path(worker.settings, file_id)
    plain.parent.mkdir(parents=True, exist_ok=True)

    def results() -> Iterator[RecordResult]:
        # Runs in the writer's thread; each chunk is read on the event loop.
        after = 0
        while True:
            chunk, after = asyncio.run_coroutine_threadsafe(
                _feedback_chunk(worker, file_id, after), loop
            ).result()
            if not chunk:
                return
            yield from chunk
            worker.crash.hit("feedback_line")

    def write() -> FeedbackTotals:
        with plain.open("wb") as out:
            totals = write_feedback(out, header, results())
            out.flush()
            os.fsync(out.fileno())
        return totals

    if worker.db.is_sqlite:
        totals = await asyncio.to_thread(write)
    else:
        totals = await _feedback_by_copy(worker, file_id, header, plain)
    if totals.record_count != ctx.record_count:
        raise RuntimeError(
            f"feedback of {file_id} has {totals.record_count} lines for {ctx.record_count} records"
        )
    name = feedback_name(ctx.base)
    out_path = storage.answer_path(worker.settings, file_id, name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(worker.crypto().encrypt_and_sign, plain, out_path, ctx.fingerprint)
    worker.crash.hit("feedback_encrypted")
    async with worker.db.unit_of_work() as s:
        await repository.advance(
            s,
            worker.id,
            file_id,
            "credited",
            "feedback_written",
            answer_name=name,
            ok_count=totals.ok_count,
            failed_count=totals.failed_count,
            points_credited=totals.points_credited,
            answered_at=utcnow(),
        )
    plain.unlink(missing_ok=True)


async def write_exception_file(worker: Worker, file_id: str) -> None:
    """``rejected`` -> ``exception_written``."""
    async with worker.db.unit_of_work() as s:
        ctx = await repository.file_context(s, file_id)
        await repository.fence_file(s, worker.id, file_id, worker.lease_until())
    storage.ensure_free_space(worker.settings)
    plain = storage.answer_plain_path(worker.settings, file_id)
    plain.parent.mkdir(parents=True, exist_ok=True)
    with plain.open("wb") as out:
        write_exception(
            out,
            ctx.code,
            ctx.file_seq,
            RejectReason(ctx.reason_code or RejectReason.BAD_FORMAT),
            ctx.reason_detail,
        )
    name = exception_name(ctx.base)
    out_path = storage.answer_path(worker.settings, file_id, name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if ctx.fingerprint is None:
        raise RuntimeError("partner key disappeared")
    await asyncio.to_thread(worker.crypto().encrypt_and_sign, plain, out_path, ctx.fingerprint)
    worker.crash.hit("exception_written")
    async with worker.db.unit_of_work() as s:
        await repository.advance(
            s,
            worker.id,
            file_id,
            "rejected",
            "exception_written",
            answer_name=name,
            answered_at=utcnow(),
        )
    plain.unlink(missing_ok=True)


async def deliver(worker: Worker, file_id: str, state: str) -> None:
    """``feedback_written``/``exception_written`` -> ``delivered``; a failed delivery is
    released to be retried after ``retry_delay``."""
    async with worker.db.unit_of_work() as s:
        ctx = await repository.file_context(s, file_id)
    if ctx.outbox_url is not None and ctx.answer_name is not None:
        path = storage.answer_path(worker.settings, file_id, ctx.answer_name)
        options = TransportOptions.for_partner(
            ctx.transport_key_file, ctx.known_hosts_file, archive=None
        )
        try:
            async with connected(ctx.outbox_url, options) as transport:
                await transport.deliver(path, ctx.answer_name)
        except (TransportError, OSError, ValueError) as exc:
            attempts = ctx.delivery_attempts + 1
            async with worker.db.unit_of_work() as s:
                await repository.release_file(
                    s,
                    worker.id,
                    file_id,
                    delivery_attempts=attempts,
                    delivery_error=sanitize_detail(str(exc)),
                    next_attempt_at=utcnow() + retry_delay(attempts),
                )
            metrics.DELIVERIES.labels("retry").inc()
            log.warning("points answer delivery failed; will retry", extra={"file_id": file_id})
            return
        worker.crash.hit("delivered")
    async with worker.db.unit_of_work() as s:
        await repository.advance(
            s,
            worker.id,
            file_id,
            state,
            "delivered",
            delivered_at=utcnow(),
            delivery_attempts=ctx.delivery_attempts + 1,
            delivery_error="",
        )
    metrics.DELIVERIES.labels("ok").inc()
