"""Claims, leases and fences: the SQL that lets any number of workers share the pipeline.

- Stage work on one file is claimed by one worker with a lease (``claimed_by``,
  ``lease_until``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent claimers pass over
  each other's rows). A crashed worker's claim is taken after its lease.
- Every transition is a conditional update on the state *and* the claim (``advance``), and
  every stage transaction starts by extending the lease (``fence_file``): a worker that lost
  its lease (it was presumed dead) can never move a file that someone else took over; it gets
  ``LostClaim`` instead.
- Crediting batches are claimed the same way: a batch whose lease expired is taken over
  (``take_over_batch``), otherwise the file's cursor advances by one batch (``claim_lines``);
  ``fence_batch`` extends the lease of a batch still ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.db import one_of, utcnow
from incentive.points_files import metrics
from incentive.points_files.models import (
    RECORDS,
    PartnerPointsSettings,
    PointsBatch,
    PointsCreditedRecord,
    PointsFile,
    max_plain_bytes_of,
)


class LostClaim(Exception):
    """This worker's lease on a file or batch was taken over; drop the work."""


@dataclass(frozen=True)
class FileContext:
    """A file as its stages need it: its row and its partner's code and points settings."""

    id: str
    state: str
    partner_id: str
    code: str
    name: str
    base: str
    file_seq: int
    reason_code: str | None
    reason_detail: str
    record_count: int
    answer_name: str | None
    delivery_attempts: int
    fingerprint: str | None
    outbox_url: str | None
    transport_key_file: str | None
    known_hosts_file: str | None
    crediting_url: str | None
    funding_account_id: int | None
    max_points: int
    stale_after_days: int
    max_records: int
    max_plain_bytes: int
    stage_attempts: int


@dataclass(frozen=True)
class ClaimedBatch:
    id: int
    first_line: int
    last_line: int
    attempts: int = 1


def _skip_locked(session: AsyncSession) -> bool:
    # SQLite has no row locks (one writer at a time): a plain SELECT there.
    return session.get_bind().dialect.name != "sqlite"


async def file_context(session: AsyncSession, file_id: str) -> FileContext:
    f, ps = (
        await session.execute(
            select(PointsFile, PartnerPointsSettings)
            .join(
                PartnerPointsSettings,
                PartnerPointsSettings.partner_id == PointsFile.partner_id,
            )
            .where(PointsFile.id == file_id)
            .execution_options(populate_existing=True)
        )
    ).one()
    code = (await auth_service.partner_codes(session, [f.partner_id]))[f.partner_id]
    return FileContext(
        f.id,
        f.state,
        f.partner_id,
        code,
        f.name,
        f.base,
        f.file_seq,
        f.reason_code,
        f.reason_detail,
        f.record_count,
        f.answer_name,
        f.delivery_attempts,
        ps.key_fingerprint,
        ps.outbox_url,
        ps.transport_key_file,
        ps.known_hosts_file,
        ps.crediting_url,
        ps.funding_account_id,
        ps.max_points_per_record,
        ps.stale_after_days,
        ps.max_records,
        max_plain_bytes_of(ps.max_records, ps.max_plain_bytes),
        f.stage_attempts,
    )


# --------------------------------------------------------------------------- files


async def claim_file(
    session: AsyncSession, worker_id: str, lease: timedelta, states: Sequence[str]
) -> tuple[str, str] | None:
    """Claim the oldest file in one of ``states`` that nobody holds (or whose lease expired)
    and whose retry time has come; ``(id, state)`` or ``None``."""
    now = utcnow()
    q = (
        select(PointsFile.id, PointsFile.state)
        .where(
            PointsFile.state.in_(states),
            or_(PointsFile.claimed_by.is_(None), PointsFile.lease_until < now),
            or_(PointsFile.next_attempt_at.is_(None), PointsFile.next_attempt_at <= now),
        )
        .order_by(PointsFile.received_at)
        .limit(1)
    )
    if _skip_locked(session):
        q = q.with_for_update(skip_locked=True)
    row = (await session.execute(q)).first()
    if row is None:
        return None
    await session.execute(
        update(PointsFile)
        .where(PointsFile.id == row.id)
        .values(claimed_by=worker_id, lease_until=now + lease)
    )
    return str(row.id), str(row.state)


async def fence_file(
    session: AsyncSession, worker_id: str, file_id: str, lease_until: datetime
) -> None:
    """Extend our lease on the file (first statement of a stage transaction)."""
    result = await session.execute(
        update(PointsFile)
        .where(PointsFile.id == file_id, PointsFile.claimed_by == worker_id)
        .values(lease_until=lease_until)
        .returning(PointsFile.id)
    )
    if result.first() is None:
        raise LostClaim(f"file {file_id} was taken over")


async def advance(
    session: AsyncSession,
    worker_id: str,
    file_id: str,
    from_state: str,
    to_state: str,
    **values: Any,
) -> None:
    """Move the file on, only if it is still ours and where we left it; releases the claim."""
    result = await session.execute(
        update(PointsFile)
        .where(
            PointsFile.id == file_id,
            PointsFile.state == from_state,
            PointsFile.claimed_by == worker_id,
        )
        .values(
            state=to_state,
            claimed_by=None,
            lease_until=None,
            updated_at=utcnow(),
            stage_attempts=0,
            stage_error="",
            **values,
        )
        .returning(PointsFile.id)
    )
    if result.first() is None:
        raise LostClaim(f"file {file_id} is no longer {from_state} and ours")
    metrics.FILES.labels(to_state).inc()


async def release_file(session: AsyncSession, worker_id: str, file_id: str, **values: Any) -> None:
    """Give up our claim on the file where it is (to be retried), setting ``values``."""
    await session.execute(
        update(PointsFile)
        .where(PointsFile.id == file_id, PointsFile.claimed_by == worker_id)
        .values(claimed_by=None, lease_until=None, **values)
    )


async def files_crediting(session: AsyncSession) -> list[str]:
    rows = await session.execute(
        select(PointsFile.id)
        .where(PointsFile.state == "crediting")
        .order_by(PointsFile.received_at)
    )
    return [str(r) for r in rows.scalars()]


# --------------------------------------------------------------------------- batches


async def take_over_batch(
    session: AsyncSession, worker_id: str, file_id: str, lease_until: datetime
) -> ClaimedBatch | None:
    """Claim the file's first batch whose holder's lease expired, if any."""
    q = (
        select(PointsBatch.id, PointsBatch.first_line, PointsBatch.last_line, PointsBatch.attempts)
        .where(
            PointsBatch.file_id == file_id,
            PointsBatch.state == "claimed",
            PointsBatch.lease_until < utcnow(),
        )
        .order_by(PointsBatch.id)
        .limit(1)
    )
    if _skip_locked(session):
        q = q.with_for_update(skip_locked=True)
    stale = (await session.execute(q)).first()
    if stale is None:
        return None
    await session.execute(
        update(PointsBatch)
        .where(PointsBatch.id == stale.id)
        .values(claimed_by=worker_id, lease_until=lease_until, attempts=PointsBatch.attempts + 1)
    )
    return ClaimedBatch(
        int(stale.id), int(stale.first_line), int(stale.last_line), int(stale.attempts) + 1
    )


async def claim_lines(
    session: AsyncSession,
    worker_id: str,
    file_id: str,
    lease_until: datetime,
    *,
    size: int,
    concurrency: int,
) -> ClaimedBatch | None:
    """Advance the file's cursor by ``size`` lines and record them as a batch claimed by us;
    ``None`` once the cursor is past the last line. The cursor's update serialises claimers."""
    now = utcnow()
    moved = (
        await session.execute(
            update(PointsFile)
            .where(
                PointsFile.id == file_id,
                PointsFile.state == "crediting",
                PointsFile.next_line <= PointsFile.last_line,
            )
            .values(
                next_line=PointsFile.next_line + size,
                batch_size=size,
                concurrency=concurrency,
                updated_at=now,
            )
            .returning(PointsFile.next_line, PointsFile.last_line)
        )
    ).first()
    if moved is None:
        return None
    first = int(moved[0]) - size
    last = min(int(moved[0]) - 1, int(moved[1]))
    batch_id = (
        await session.execute(
            insert(PointsBatch)
            .values(
                file_id=file_id,
                first_line=first,
                last_line=last,
                state="claimed",
                claimed_by=worker_id,
                lease_until=lease_until,
                attempts=1,
                ok_count=0,
                failed_count=0,
                points_credited=0,
                created_at=now,
            )
            .returning(PointsBatch.id)
        )
    ).scalar_one()
    return ClaimedBatch(int(batch_id), first, last)


async def fence_batch(
    session: AsyncSession, worker_id: str, batch_id: int, lease_until: datetime
) -> None:
    """Extend our lease on a batch still claimed by us (else ``LostClaim``)."""
    result = await session.execute(
        update(PointsBatch)
        .where(
            PointsBatch.id == batch_id,
            PointsBatch.claimed_by == worker_id,
            PointsBatch.state == "claimed",
        )
        .values(lease_until=lease_until)
        .returning(PointsBatch.id)
    )
    if result.first() is None:
        raise LostClaim(f"batch {batch_id} was taken over")


# --------------------------------------------------------------------------- credited ids


async def credited_ids(
    session: AsyncSession, partner_id: str, record_ids: Sequence[str]
) -> set[str]:
    """The ids among ``record_ids`` already credited for the partner (in any file)."""
    found: set[str] = set()
    ids = list(set(record_ids))
    for start in range(0, len(ids), 5000):
        rows = await session.execute(
            select(PointsCreditedRecord.record_id).where(
                PointsCreditedRecord.partner_id == partner_id,
                one_of(session, PointsCreditedRecord.record_id, ids[start : start + 5000]),
            )
        )
        found.update(str(r) for r in rows.scalars())
    return found


# --------------------------------------------------------------------------- staged batches
# Set-based forms of a crediting batch's steps, over the batch's line range (PostgreSQL).


def batch_records(file_id: str, batch: ClaimedBatch, state: str) -> Select[Any]:
    """The batch's records in ``state``: ``record_id``, ``user_id``, ``points``, ``line_no``."""
    r = RECORDS.c
    return select(r.record_id, r.user_id, r.points, r.line_no).where(
        r.file_id == file_id,
        r.line_no.between(batch.first_line, batch.last_line),
        r.state == state,
    )


_CLAIM_BATCH_IDS = text(
    """
    WITH claimed AS (
        INSERT INTO points_credited_records (partner_id, record_id, file_id, line_no, credited_at)
        SELECT CAST(:p AS varchar), record_id, file_id, line_no, CAST(:now AS timestamptz)
        FROM points_records
        WHERE file_id = :f AND line_no BETWEEN :first AND :last AND state = 'valid'
        ORDER BY record_id
        ON CONFLICT DO NOTHING
        RETURNING line_no
    )
    UPDATE points_records SET state = 'failed', reason = 'DUPLICATE_RECORD',
        detail = 'record_id already credited'
    WHERE file_id = :f AND line_no BETWEEN :first AND :last AND state = 'valid'
        AND line_no NOT IN (SELECT line_no FROM claimed)
    """
)


async def claim_batch_record_ids(
    session: AsyncSession, partner_id: str, file_id: str, batch: ClaimedBatch
) -> int:
    """Insert (partner, record id) for each record of the batch still to credit (ids in sorted
    order); a record whose id someone else holds is failed ``DUPLICATE_RECORD``. Returns how
    many were failed so."""
    result = await session.execute(
        _CLAIM_BATCH_IDS,
        {
            "p": partner_id,
            "f": file_id,
            "first": batch.first_line,
            "last": batch.last_line,
            "now": utcnow(),
        },
    )
    return int(getattr(result, "rowcount", 0) or 0)


_MARK_BATCH_CREDITED = text(
    """
    WITH credited AS (
        UPDATE points_records SET state = 'credited'
        WHERE file_id = :f AND line_no BETWEEN :first AND :last AND state = 'valid'
        RETURNING points
    )
    SELECT count(*), coalesce(sum(points), 0) FROM credited
    """
)


async def mark_batch_credited(
    session: AsyncSession, file_id: str, batch: ClaimedBatch
) -> tuple[int, int]:
    """The batch's records still ``valid`` become ``credited``; (how many, their points)."""
    count, points = (
        await session.execute(
            _MARK_BATCH_CREDITED,
            {"f": file_id, "first": batch.first_line, "last": batch.last_line},
        )
    ).one()
    return int(count), int(points)
