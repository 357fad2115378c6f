"""The points-file pipeline: durable stages driven by any number of workers.

Stages of a file (``points_files.state``), each committed before the next starts::

    received -> decrypted -> staged -> validated -> crediting -> credited
             -> feedback_written -> delivered
    (any stage before crediting) -> rejected -> exception_written -> delivered

- Stage work on one file is claimed by one worker with a lease (``claimed_by``, ``lease_until``;
  ``FOR UPDATE SKIP LOCKED`` on PostgreSQL). Every transition is a conditional update on the
  state *and* the claim, so a worker that lost its lease (it was presumed dead) can never
  move a file that someone else took over; a crashed worker's claim is taken after the lease.
- Staging streams the decrypted file (never whole in memory) in chunks of
  ``settings.points_stage_chunk`` records, each chunk validated against the members and the
  credited record ids and written
  in one statement (COPY on PostgreSQL, executemany on SQLite) in its own transaction. A
  restart of staging deletes the partial rows and starts over. Validation then flags record
  ids repeated inside the file.
- Crediting is shared: workers claim line ranges (``points_batches``) by advancing the file's
  cursor, sized by the adaptive limiter; a batch whose lease expired is taken over. A batch
  commits, in one transaction, the credited record ids (unique per partner forever), the
  ledger transfers (idempotency key ``partner:<code>:<record_id>``), the record states and the
  batch's ``done`` mark, so a record is credited at most once whatever is killed when.
- The feedback file is written from the database in line order (one ``R`` per ``D``),
  encrypted and signed, then delivered with retries until the transport acknowledges.

``INCENTIVE_POINTS_CRASH_AT=<point>:<n>`` makes the process kill itself (SIGKILL) the n-th time
it passes ``<point>`` (see ``CRASH_POINTS``); the crash-safety tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.config.keys import POINTS_FILE_BATCH_SIZE, POINTS_FILE_WORKERS
from incentive.config.live import live_config
from incentive.db import Database, one_of, utcnow
from incentive.db import insert as db_insert
from incentive.points_files import intake, metrics, storage
from incentive.points_files.answer_format import (
    AnswerHeader,
    RecordResult,
    RecordStatus,
    write_exception,
    write_feedback,
)
from incentive.points_files.backends.targets import (
    CreditingTarget,
    CreditItem,
    CreditPartner,
    CreditRefusal,
    HttpTarget,
    LedgerTarget,
    TargetUnavailable,
)
from incentive.points_files.backends.transports import TransportOptions, connected
from incentive.points_files.crypto import PointsCrypto, default_gnupg_home, init_platform_key
from incentive.points_files.errors import FileRejected, TransportError
from incentive.points_files.format import (
    DetailRecord,
    PointsFileReader,
    RecordReason,
    RejectReason,
    exception_name,
    feedback_name,
    parse_points_file_name,
    sanitize_detail,
)
from incentive.points_files.limiter import AdaptiveLimiter, LimiterSettings
from incentive.points_files.models import (
    PartnerPointsSettings,
    PointsBatch,
    PointsCreditedRecord,
    PointsFile,
    PointsRecord,
)
from incentive.settings import Settings

log = logging.getLogger(__name__)

FEEDBACK_CHUNK = 10_000
FUTURE_TOLERANCE = timedelta(minutes=10)
STAGE_STATES = (
    "received",
    "decrypted",
    "staged",
    "validated",
    "credited",
    "rejected",
    "feedback_written",
    "exception_written",
)
CRASH_POINTS = (
    "received",  # a file stored and recorded, before it leaves the inbox
    "decrypted",  # decrypted to the work file, before the stage commits
    "staging",  # after the n-th staged chunk committed
    "staged",  # all records stored, before the stage commits
    "validated",  # in-file duplicates flagged, before the stage commits
    "batch_claimed",  # a batch claimed, nothing credited yet
    "batch_credited",  # inside a batch transaction: ledger written, not committed
    "batch_committed",  # the n-th batch committed
    "feedback_line",  # after the n-th chunk of feedback lines written
    "feedback_encrypted",  # feedback encrypted, before the stage commits
    "exception_written",  # exception file encrypted, before the stage commits
    "delivered",  # the answer is in the outbox, before the stage commits
)
RECORD_COLUMNS = (
    "file_id",
    "line_no",
    "record_id",
    "member_id",
    "points",
    "txn_time",
    "memo",
    "user_id",
    "state",
    "reason",
    "detail",
)


_RECORDS = cast(Table, PointsRecord.__table__)


class LostClaim(Exception):
    """This worker's lease on a file or batch was taken over; drop the work."""


class CrashPoints:
    """The test hook: SIGKILL this process at the n-th pass of one named point."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.n = 0
        self._seen: dict[str, int] = {}
        if spec:
            point, _, n = spec.partition(":")
            if point not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {point!r}; one of {CRASH_POINTS}")
            self.point, self.n = point, int(n or "1")

    def hit(self, point: str) -> None:
        if self.point != point:
            return
        self._seen[point] = self._seen.get(point, 0) + 1
        if self._seen[point] >= self.n:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FileContext:
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


@dataclass(frozen=True)
class ClaimedBatch:
    id: int
    first_line: int
    last_line: int


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(300.0, 2.0 ** min(attempts, 10)))


def transport_options(
    key_file: str | None, known_hosts: str | None, *, archive: str | None
) -> TransportOptions:
    """A partner URL names the directory itself (``inbox_dir``/``outbox_dir`` are ``.``)."""
    return TransportOptions(
        inbox_dir=".",
        outbox_dir=".",
        archive_dir=archive,
        client_key=Path(key_file) if key_file else None,
        known_hosts=Path(known_hosts) if known_hosts else None,
    )


class PointsPipeline:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        worker_id: str | None = None,
        limiter_settings: LimiterSettings | None = None,
        credit_attempts: int = 4,
        retry_base_s: float = 0.2,
        crash_spec: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = timedelta(seconds=settings.points_lease_seconds)
        self.credit_attempts = credit_attempts
        self.retry_base_s = retry_base_s
        self.crash = CrashPoints(
            crash_spec if crash_spec is not None else os.environ.get("INCENTIVE_POINTS_CRASH_AT")
        )
        self._limiter_template = limiter_settings or LimiterSettings()
        self._limiters: dict[str, tuple[tuple[int, int], AdaptiveLimiter]] = {}
        self._targets: dict[str, CreditingTarget] = {}
        self._crypto: PointsCrypto | None = None

    # ----------------------------------------------------------------------- plumbing

    def crypto(self) -> PointsCrypto:
        if self._crypto is None:
            self._crypto = init_platform_key(
                default_gnupg_home(self.settings), "Incentive points files", "points@incentive"
            )
        return self._crypto

    def limiter(self, target_name: str) -> AdaptiveLimiter:
        """The process's limiter for one target, rebuilt when the live bounds change."""
        bounds = (
            int(live_config.get(POINTS_FILE_BATCH_SIZE)),
            int(live_config.get(POINTS_FILE_WORKERS)),
        )
        current = self._limiters.get(target_name)
        if current is not None and current[0] == bounds:
            return current[1]
        t = self._limiter_template
        limiter = AdaptiveLimiter(
            dataclasses.replace(
                t,
                min_batch_size=min(t.min_batch_size, bounds[0]),
                initial_batch_size=bounds[0],
                max_batch_size=bounds[0],
                min_concurrency=min(t.min_concurrency, bounds[1]),
                initial_concurrency=bounds[1],
                max_concurrency=bounds[1],
            )
        )
        self._limiters[target_name] = (bounds, limiter)
        return limiter

    def target(self, crediting_url: str | None) -> CreditingTarget:
        key = crediting_url or "ledger"
        if key not in self._targets:
            self._targets[key] = HttpTarget(crediting_url) if crediting_url else LedgerTarget()
        return self._targets[key]

    async def aclose(self) -> None:
        for t in self._targets.values():
            await t.aclose()
        self._targets.clear()

    def _is_sqlite(self) -> bool:
        return self.db.is_sqlite

    def _lease_until(self) -> datetime:
        return utcnow() + self.lease

    async def _context(self, session: AsyncSession, file_id: str) -> FileContext:
        row = (
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
        f, ps = row
        code = (await auth_service.partner_codes(session, [f.partner_id]))[f.partner_id]
        return FileContext(
            f.id,
            f.state,
            f.partner_id,
            str(code),
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
        )

    async def _advance(
        self, session: AsyncSession, file_id: str, from_state: str, to_state: str, **values: Any
    ) -> None:
        """Move the file on, only if it is still ours and where we left it; releases the claim."""
        result = await session.execute(
            update(PointsFile)
            .where(
                PointsFile.id == file_id,
                PointsFile.state == from_state,
                PointsFile.claimed_by == self.worker_id,
            )
            .values(
                state=to_state, claimed_by=None, lease_until=None, updated_at=utcnow(), **values
            )
            .returning(PointsFile.id)
        )
        if result.first() is None:
            raise LostClaim(f"file {file_id} is no longer {from_state} and ours")
        metrics.FILES.labels(to_state).inc()

    async def _fence_file(self, session: AsyncSession, file_id: str) -> None:
        """Extend our lease on the file (first statement of a stage transaction)."""
        result = await session.execute(
            update(PointsFile)
            .where(PointsFile.id == file_id, PointsFile.claimed_by == self.worker_id)
            .values(lease_until=self._lease_until())
            .returning(PointsFile.id)
        )
        if result.first() is None:
            raise LostClaim(f"file {file_id} was taken over")

    async def _reject(
        self, file_id: str, from_state: str, reason: RejectReason, detail: str
    ) -> None:
        async with self.db.unit_of_work() as s:
            await self._fence_file(s, file_id)
            await s.execute(delete(PointsRecord).where(PointsRecord.file_id == file_id))
            await self._advance(
                s,
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
        plain = storage.plain_path(self.settings, file_id)
        plain.unlink(missing_ok=True)
        log.info("points file rejected", extra={"file_id": file_id, "reason": str(reason)})

    # ----------------------------------------------------------------------- driving

    async def run_once(self) -> bool:
        """Do every piece of work that can be claimed now; ``True`` if anything was done."""
        did = False
        while (job := await self._claim_file()) is not None:
            did = True
            try:
                await self._run_stage(*job)
            except LostClaim as exc:
                log.warning("points file claim lost", extra={"problem": str(exc)})
        for file_id in await self._crediting_files():
            did = await self._credit_file(file_id) or did
        return did

    async def pending_files(self) -> int:
        async with self.db.unit_of_work() as s:
            return int(
                await s.scalar(
                    select(func.count())
                    .select_from(PointsFile)
                    .where(PointsFile.state != "delivered")
                )
                or 0
            )

    async def run_until_done(self, timeout_s: float | None = None, poll_s: float = 0.2) -> None:
        """Work until every file is delivered (waiting out other workers' leases)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if await self.run_once():
                continue
            if not await self.pending_files():
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("points files still pending")
            await asyncio.sleep(poll_s)

    async def run_forever(self, *, poll_inboxes: bool = True, idle_s: float = 0.5) -> None:
        next_poll = 0.0
        try:
            while True:
                if poll_inboxes and time.monotonic() >= next_poll:
                    try:
                        await self.poll_inboxes()
                    except (asyncio.CancelledError, LostClaim):
                        raise
                    except Exception:
                        log.exception("points inbox polling failed")
                    next_poll = time.monotonic() + self.settings.points_poll_seconds
                try:
                    did = await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("points pipeline step failed")
                    did = False
                if not did:
                    await asyncio.sleep(idle_s)
        finally:
            await self.aclose()

    async def _claim_file(self) -> tuple[str, str] | None:
        now = utcnow()
        async with self.db.unit_of_work() as s:
            q = (
                select(PointsFile.id, PointsFile.state)
                .where(
                    PointsFile.state.in_(STAGE_STATES),
                    or_(PointsFile.claimed_by.is_(None), PointsFile.lease_until < now),
                    or_(PointsFile.next_attempt_at.is_(None), PointsFile.next_attempt_at <= now),
                )
                .order_by(PointsFile.received_at)
                .limit(1)
            )
            if not self._is_sqlite():
                q = q.with_for_update(skip_locked=True)
            row = (await s.execute(q)).first()
            if row is None:
                return None
            await s.execute(
                update(PointsFile)
                .where(PointsFile.id == row.id)
                .values(claimed_by=self.worker_id, lease_until=now + self.lease)
            )
            return str(row.id), str(row.state)

    async def _run_stage(self, file_id: str, state: str) -> None:
        started = time.monotonic()
        if state == "received":
            await self._decrypt(file_id)
        elif state == "decrypted":
            await self._stage(file_id)
        elif state == "staged":
            await self._validate(file_id)
        elif state == "validated":
            async with self.db.unit_of_work() as s:
                await self._advance(
                    s, file_id, "validated", "crediting", next_line=2, crediting_started_at=utcnow()
                )
        elif state == "credited":
            await self._write_feedback(file_id)
        elif state == "rejected":
            await self._write_exception(file_id)
        elif state in ("feedback_written", "exception_written"):
            await self._deliver(file_id, state)
        metrics.STAGE_SECONDS.labels(state).observe(time.monotonic() - started)

    # ----------------------------------------------------------------------- decrypt

    async def _decrypt_to_work(self, ctx: FileContext) -> Path:
        out = storage.plain_path(self.settings, ctx.id)
        out.parent.mkdir(parents=True, exist_ok=True)
        if ctx.fingerprint is None:
            raise FileRejected(RejectReason.BAD_SIGNATURE, "no OpenPGP key registered for partner")
        await asyncio.to_thread(
            self.crypto().decrypt_and_verify,
            storage.inbound_path(self.settings, ctx.id),
            out,
            ctx.fingerprint,
        )
        return out

    async def _decrypt(self, file_id: str) -> None:
        async with self.db.unit_of_work() as s:
            ctx = await self._context(s, file_id)
        try:
            await self._decrypt_to_work(ctx)
        except FileRejected as exc:
            await self._reject(file_id, "received", exc.reason_code, exc.exception_detail)
            return
        self.crash.hit("decrypted")
        async with self.db.unit_of_work() as s:
            await self._advance(s, file_id, "received", "decrypted")

    # ----------------------------------------------------------------------- stage

    async def _stage(self, file_id: str) -> None:
        async with self.db.unit_of_work() as s:
            ctx = await self._context(s, file_id)
            await self._fence_file(s, file_id)
            leftover = await s.scalar(
                select(PointsRecord.line_no).where(PointsRecord.file_id == file_id).limit(1)
            )
            if leftover is not None:  # a crashed attempt's partial rows
                await s.execute(delete(PointsRecord).where(PointsRecord.file_id == file_id))
        plain = storage.plain_path(self.settings, file_id)
        if not plain.exists():
            try:
                await self._decrypt_to_work(ctx)
            except FileRejected as exc:
                await self._reject(file_id, "decrypted", exc.reason_code, exc.exception_detail)
                return
        failed = 0
        last_line = 1
        try:
            with plain.open("rb") as stream:
                reader = PointsFileReader(
                    stream, ctx.code, expected_file_seq=ctx.file_seq, detect_duplicates=False
                )
                chunk: list[DetailRecord] = []
                for record in reader:
                    chunk.append(record)
                    if len(chunk) >= self.settings.points_stage_chunk:
                        failed += await self._stage_chunk(ctx, chunk)
                        last_line = chunk[-1].line_no
                        chunk = []
                        self.crash.hit("staging")
                if chunk:
                    failed += await self._stage_chunk(ctx, chunk)
                    last_line = chunk[-1].line_no
        except FileRejected as exc:
            await self._reject(file_id, "decrypted", exc.reason_code, exc.exception_detail)
            return
        self.crash.hit("staged")
        async with self.db.unit_of_work() as s:
            await self._advance(
                s,
                file_id,
                "decrypted",
                "staged",
                record_count=reader.record_count,
                points_total=reader.points_sum,
                last_line=last_line,
                failed_count=failed,
                staged_at=utcnow(),
            )
        plain.unlink(missing_ok=True)
        metrics.RECORDS_STAGED.inc(reader.record_count)

    async def _stage_chunk(self, ctx: FileContext, chunk: Sequence[DetailRecord]) -> int:
        """Validate and store one chunk of records in one transaction; returns the failures."""
        now = utcnow()
        oldest = now - timedelta(days=ctx.stale_after_days)
        newest = now + FUTURE_TOLERANCE
        async with self.db.unit_of_work() as s:
            await self._fence_file(s, ctx.id)
            members = await auth_service.members_by_username(s, {r.member_id for r in chunk})
            credited = await self._credited_ids(s, ctx.partner_id, [r.record_id for r in chunk])
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
                        r.points,
                        r.txn_time.astimezone(UTC),
                        r.memo,
                        member.user_id if member is not None else None,
                        "valid" if reason is None else "failed",
                        None if reason is None else str(reason),
                        detail,
                    )
                )
            await self._insert_records(s, rows)
        return failed

    async def _insert_records(self, session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
        if self._is_sqlite():
            await session.execute(
                insert(_RECORDS),
                [dict(zip(RECORD_COLUMNS, r, strict=True)) for r in rows],
            )
            return
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.copy_records_to_table(
            "points_records", records=rows, columns=list(RECORD_COLUMNS)
        )

    async def _credited_ids(
        self, session: AsyncSession, partner_id: str, record_ids: Sequence[str]
    ) -> set[str]:
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

    # ----------------------------------------------------------------------- validate

    async def _validate(self, file_id: str) -> None:
        """Flag record ids repeated inside the file (the first occurrence is the one credited)."""
        async with self.db.unit_of_work() as s:
            await self._fence_file(s, file_id)
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
            self.crash.hit("validated")
            await self._advance(
                s,
                file_id,
                "staged",
                "validated",
                failed_count=PointsFile.failed_count + repeated,
            )

    # ----------------------------------------------------------------------- credit

    async def _crediting_files(self) -> list[str]:
        async with self.db.unit_of_work() as s:
            rows = await s.execute(
                select(PointsFile.id)
                .where(PointsFile.state == "crediting")
                .order_by(PointsFile.received_at)
            )
            return [str(r) for r in rows.scalars()]

    async def _credit_file(self, file_id: str) -> bool:
        """Credit batches of one file with the limiter's concurrency until none is claimable."""
        async with self.db.unit_of_work() as s:
            ctx = await self._context(s, file_id)
        target = self.target(ctx.crediting_url)
        limiter = self.limiter(target.name)
        running: set[asyncio.Task[None]] = set()
        did = False
        try:
            while True:
                while len(running) < limiter.concurrency:
                    batch = await self._claim_batch(file_id, limiter)
                    if batch is None:
                        break
                    did = True
                    running.add(asyncio.create_task(self._run_batch(ctx, batch, target, limiter)))
                metrics.BATCH_SIZE.labels(target.name).set(limiter.batch_size)
                metrics.CONCURRENCY.labels(target.name).set(limiter.concurrency)
                if not running:
                    break
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if isinstance(exc, LostClaim):
                        log.warning("points batch claim lost", extra={"problem": str(exc)})
                    elif exc is not None:
                        log.error("points batch failed; retried after its lease", exc_info=exc)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return await self._finish_crediting(file_id) or did

    async def _claim_batch(self, file_id: str, limiter: AdaptiveLimiter) -> ClaimedBatch | None:
        now = utcnow()
        until = now + self.lease
        async with self.db.unit_of_work() as s:
            q = (
                select(PointsBatch.id, PointsBatch.first_line, PointsBatch.last_line)
                .where(
                    PointsBatch.file_id == file_id,
                    PointsBatch.state == "claimed",
                    PointsBatch.lease_until < now,
                )
                .order_by(PointsBatch.id)
                .limit(1)
            )
            if not self._is_sqlite():
                q = q.with_for_update(skip_locked=True)
            stale = (await s.execute(q)).first()
            if stale is not None:
                await s.execute(
                    update(PointsBatch)
                    .where(PointsBatch.id == stale.id)
                    .values(
                        claimed_by=self.worker_id,
                        lease_until=until,
                        attempts=PointsBatch.attempts + 1,
                    )
                )
                metrics.BATCHES.labels("taken_over").inc()
                batch = ClaimedBatch(int(stale.id), int(stale.first_line), int(stale.last_line))
            else:
                size = limiter.batch_size
                moved = (
                    await s.execute(
                        update(PointsFile)
                        .where(
                            PointsFile.id == file_id,
                            PointsFile.state == "crediting",
                            PointsFile.next_line <= PointsFile.last_line,
                        )
                        .values(
                            next_line=PointsFile.next_line + size,
                            batch_size=size,
                            concurrency=limiter.concurrency,
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
                    await s.execute(
                        insert(PointsBatch)
                        .values(
                            file_id=file_id,
                            first_line=first,
                            last_line=last,
                            state="claimed",
                            claimed_by=self.worker_id,
                            lease_until=until,
                            attempts=1,
                            ok_count=0,
                            failed_count=0,
                            points_credited=0,
                            created_at=now,
                        )
                        .returning(PointsBatch.id)
                    )
                ).scalar_one()
                batch = ClaimedBatch(int(batch_id), first, last)
        self.crash.hit("batch_claimed")
        return batch

    async def _load_items(self, file_id: str, batch: ClaimedBatch) -> list[CreditItem]:
        # Core columns (not ORM attributes): rows come back without the ORM's per-row
        # loading, which was a sixth of crediting's CPU.
        r = _RECORDS.c
        async with self.db.unit_of_work() as s:
            rows = await s.execute(
                select(r.line_no, r.record_id, r.member_id, r.user_id, r.points, r.txn_time, r.memo)
                .where(
                    r.file_id == file_id,
                    r.line_no.between(batch.first_line, batch.last_line),
                    r.state == "valid",
                )
                .order_by(r.line_no)
            )
            return [CreditItem(*row) for row in rows]

    async def _run_batch(
        self,
        ctx: FileContext,
        batch: ClaimedBatch,
        target: CreditingTarget,
        limiter: AdaptiveLimiter,
    ) -> None:
        items = await self._load_items(ctx.id, batch)
        partner = CreditPartner(ctx.partner_id, ctx.code, ctx.funding_account_id, ctx.id)
        for attempt in range(1, self.credit_attempts + 1):
            started = time.monotonic()
            try:
                if target.in_transaction:
                    await self._commit_batch(ctx, batch, items, [], target, partner, started)
                else:
                    async with self.db.unit_of_work() as s:
                        already = await self._credited_ids(
                            s, ctx.partner_id, [i.record_id for i in items]
                        )
                    fresh = [i for i in items if i.record_id not in already]
                    refused = await target.credit(partner, fresh, None)
                    await self._commit_batch(ctx, batch, items, refused, target, partner, started)
            except TargetUnavailable as exc:
                limiter.record_error()
                metrics.TARGET_CALLS.labels(target.name, "unavailable").inc()
                if attempt == self.credit_attempts:
                    detail = f"crediting system unavailable after {attempt} attempts: {exc}"
                    refused = [CreditRefusal(i.line_no, detail) for i in items]
                    await self._commit_batch(
                        ctx, batch, items, refused, target, partner, started, skip_target=True
                    )
                    return
                await self._extend_batch_lease(batch)
                delay = self.retry_base_s * 2 ** (attempt - 1)
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 jitter
                continue
            limiter.record_success(time.monotonic() - started)
            metrics.TARGET_CALLS.labels(target.name, "ok").inc()
            return

    async def _extend_batch_lease(self, batch: ClaimedBatch) -> None:
        async with self.db.unit_of_work() as s:
            result = await s.execute(
                update(PointsBatch)
                .where(
                    PointsBatch.id == batch.id,
                    PointsBatch.claimed_by == self.worker_id,
                    PointsBatch.state == "claimed",
                )
                .values(lease_until=self._lease_until())
                .returning(PointsBatch.id)
            )
            if result.first() is None:
                raise LostClaim(f"batch {batch.id} was taken over")

    async def _commit_batch(
        self,
        ctx: FileContext,
        batch: ClaimedBatch,
        items: list[CreditItem],
        refused: list[CreditRefusal],
        target: CreditingTarget,
        partner: CreditPartner,
        started: float,
        *,
        skip_target: bool = False,
    ) -> None:
        """One transaction: credited ids, the credit itself (in-transaction targets), record
        states and the batch's ``done`` mark. Fenced on the batch's claim."""
        failures: dict[int, tuple[str, str]] = {
            r.line_no: (str(RecordReason.CREDIT_FAILED), r.detail) for r in refused
        }
        async with self.db.unit_of_work() as s:
            fence = await s.execute(
                update(PointsBatch)
                .where(
                    PointsBatch.id == batch.id,
                    PointsBatch.claimed_by == self.worker_id,
                    PointsBatch.state == "claimed",
                )
                .values(lease_until=self._lease_until())
                .returning(PointsBatch.id)
            )
            if fence.first() is None:
                raise LostClaim(f"batch {batch.id} was taken over")
            wanted = [i for i in items if i.line_no not in failures]
            won = await self._claim_record_ids(s, ctx, wanted)
            for i in wanted:
                if i.record_id not in won:
                    failures[i.line_no] = (
                        str(RecordReason.DUPLICATE_RECORD),
                        "record_id already credited",
                    )
            winners = [i for i in wanted if i.record_id in won]
            if target.in_transaction and not skip_target and winners:
                refusals = await target.credit(partner, winners, s)
                if refusals:
                    lines = {r.line_no for r in refusals}
                    await s.execute(
                        delete(PointsCreditedRecord).where(
                            PointsCreditedRecord.partner_id == ctx.partner_id,
                            PointsCreditedRecord.record_id.in_(
                                [i.record_id for i in winners if i.line_no in lines]
                            ),
                        )
                    )
                    for r in refusals:
                        failures[r.line_no] = (str(RecordReason.CREDIT_FAILED), r.detail)
            self.crash.hit("batch_credited")
            if failures:
                await s.execute(
                    update(_RECORDS)
                    .where(
                        _RECORDS.c.file_id == ctx.id,
                        _RECORDS.c.line_no == bindparam("ln"),
                    )
                    .values(state="failed", reason=bindparam("rsn"), detail=bindparam("dtl")),
                    [
                        {"ln": line, "rsn": reason, "dtl": sanitize_detail(detail)}
                        for line, (reason, detail) in failures.items()
                    ],
                )
            await s.execute(
                update(PointsRecord)
                .where(
                    PointsRecord.file_id == ctx.id,
                    PointsRecord.line_no.between(batch.first_line, batch.last_line),
                    PointsRecord.state == "valid",
                )
                .values(state="credited")
                .execution_options(synchronize_session=False)
            )
            ok = [i for i in items if i.line_no not in failures]
            await s.execute(
                update(PointsBatch)
                .where(PointsBatch.id == batch.id)
                .values(
                    state="done",
                    done_by=self.worker_id,
                    ok_count=len(ok),
                    failed_count=len(failures),
                    points_credited=sum(i.points for i in ok),
                    latency_ms=int((time.monotonic() - started) * 1000),
                    done_at=utcnow(),
                )
            )
        self.crash.hit("batch_committed")
        metrics.BATCHES.labels("done").inc()
        metrics.RECORDS_CREDITED.labels("ok").inc(len(ok))
        metrics.RECORDS_CREDITED.labels("failed").inc(len(failures))

    async def _claim_record_ids(
        self, session: AsyncSession, ctx: FileContext, items: list[CreditItem]
    ) -> set[str]:
        """Insert (partner, record id) for each item; returns the ids this call inserted."""
        if not items:
            return set()
        now = utcnow()
        if self._is_sqlite():
            stmt = (
                db_insert(session, PointsCreditedRecord)
                .on_conflict_do_nothing()
                .returning(PointsCreditedRecord.record_id)
            )
            rows = await session.execute(
                stmt,
                [
                    {
                        "partner_id": ctx.partner_id,
                        "record_id": i.record_id,
                        "file_id": ctx.id,
                        "line_no": i.line_no,
                        "credited_at": now,
                    }
                    for i in items
                ],
            )
            return {str(r) for r in rows.scalars()}
        ordered = sorted(items, key=lambda i: i.record_id)
        rows = await session.execute(
            text(
                """
                INSERT INTO points_credited_records
                    (partner_id, record_id, file_id, line_no, credited_at)
                SELECT :p, r, :f, l, :now
                FROM unnest(CAST(:ids AS varchar[]), CAST(:lines AS integer[]))
                    WITH ORDINALITY AS u(r, l, n) ORDER BY n
                ON CONFLICT DO NOTHING
                RETURNING record_id
                """
            ),
            {
                "p": ctx.partner_id,
                "f": ctx.id,
                "now": now,
                "ids": [i.record_id for i in ordered],
                "lines": [i.line_no for i in ordered],
            },
        )
        return {str(r[0]) for r in rows}

    async def _finish_crediting(self, file_id: str) -> bool:
        """``crediting`` -> ``credited`` once the cursor is past the end and no batch is open."""
        async with self.db.unit_of_work() as s:
            open_batch = (
                select(PointsBatch.id)
                .where(PointsBatch.file_id == file_id, PointsBatch.state == "claimed")
                .exists()
            )
            result = await s.execute(
                update(PointsFile)
                .where(
                    PointsFile.id == file_id,
                    PointsFile.state == "crediting",
                    PointsFile.next_line > PointsFile.last_line,
                    ~open_batch,
                )
                .values(state="credited", credited_at=utcnow(), updated_at=utcnow())
                .returning(PointsFile.id)
            )
            moved = result.first() is not None
        if moved:
            metrics.FILES.labels("credited").inc()
        return moved

    # ----------------------------------------------------------------------- answers

    async def _feedback_chunk(self, file_id: str, after: int) -> list[RecordResult]:
        async with self.db.unit_of_work() as s:
            rows = await s.execute(
                select(
                    PointsRecord.line_no,
                    PointsRecord.record_id,
                    PointsRecord.member_id,
                    PointsRecord.points,
                    PointsRecord.state,
                    PointsRecord.reason,
                    PointsRecord.detail,
                )
                .where(PointsRecord.file_id == file_id, PointsRecord.line_no > after)
                .order_by(PointsRecord.line_no)
                .limit(FEEDBACK_CHUNK)
            )
            out: list[RecordResult] = []
            for line_no, record_id, member_id, points, state, reason, detail in rows:
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
                self._last_feedback_line = int(line_no)
            return out

    async def _write_feedback(self, file_id: str) -> None:
        async with self.db.unit_of_work() as s:
            ctx = await self._context(s, file_id)
            await self._fence_file(s, file_id)
        if ctx.fingerprint is None:
            raise RuntimeError("partner key disappeared")
        loop = asyncio.get_running_loop()
        header = AnswerHeader(ctx.code, ctx.file_seq, utcnow())
        plain = storage.answer_plain_path(self.settings, file_id)
        plain.parent.mkdir(parents=True, exist_ok=True)
        self._last_feedback_line = 0

        def results() -> Iterator[RecordResult]:
            while True:
                chunk = asyncio.run_coroutine_threadsafe(
                    self._feedback_chunk(file_id, self._last_feedback_line), loop
                ).result()
                if not chunk:
                    return
                yield from chunk
                self.crash.hit("feedback_line")

        def write() -> Any:
            with plain.open("wb") as out:
                totals = write_feedback(out, header, results())
                out.flush()
                os.fsync(out.fileno())
            return totals

        totals = await asyncio.to_thread(write)
        if totals.record_count != ctx.record_count:
            raise RuntimeError(
                f"feedback of {file_id} has {totals.record_count} lines for "
                f"{ctx.record_count} records"
            )
        name = feedback_name(ctx.base)
        out_path = storage.answer_path(self.settings, file_id, name)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.crypto().encrypt_and_sign, plain, out_path, ctx.fingerprint)
        self.crash.hit("feedback_encrypted")
        async with self.db.unit_of_work() as s:
            await self._advance(
                s,
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

    async def _write_exception(self, file_id: str) -> None:
        async with self.db.unit_of_work() as s:
            ctx = await self._context(s, file_id)
            await self._fence_file(s, file_id)
        plain = storage.answer_plain_path(self.settings, file_id)
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
        out_path = storage.answer_path(self.settings, file_id, name)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if ctx.fingerprint is None:
            raise RuntimeError("partner key disappeared")
        await asyncio.to_thread(self.crypto().encrypt_and_sign, plain, out_path, ctx.fingerprint)
        self.crash.hit("exception_written")
        async with self.db.unit_of_work() as s:
            await self._advance(
                s, file_id, "rejected", "exception_written", answer_name=name, answered_at=utcnow()
            )
        plain.unlink(missing_ok=True)

    async def _deliver(self, file_id: str, state: str) -> None:
        async with self.db.unit_of_work() as s:
            ctx = await self._context(s, file_id)
        if ctx.outbox_url is not None and ctx.answer_name is not None:
            path = storage.answer_path(self.settings, file_id, ctx.answer_name)
            options = transport_options(ctx.transport_key_file, ctx.known_hosts_file, archive=None)
            try:
                async with connected(ctx.outbox_url, options) as transport:
                    await transport.deliver(path, ctx.answer_name)
            except (TransportError, OSError, ValueError) as exc:
                attempts = ctx.delivery_attempts + 1
                async with self.db.unit_of_work() as s:
                    await s.execute(
                        update(PointsFile)
                        .where(PointsFile.id == file_id, PointsFile.claimed_by == self.worker_id)
                        .values(
                            delivery_attempts=attempts,
                            delivery_error=sanitize_detail(str(exc)),
                            next_attempt_at=utcnow() + retry_delay(attempts),
                            claimed_by=None,
                            lease_until=None,
                        )
                    )
                metrics.DELIVERIES.labels("retry").inc()
                log.warning("points answer delivery failed; will retry", extra={"file_id": file_id})
                return
            self.crash.hit("delivered")
        async with self.db.unit_of_work() as s:
            await self._advance(
                s,
                file_id,
                state,
                "delivered",
                delivered_at=utcnow(),
                delivery_attempts=ctx.delivery_attempts + 1,
                delivery_error="",
            )
        metrics.DELIVERIES.labels("ok").inc()

    # ----------------------------------------------------------------------- inboxes

    async def poll_inboxes(self) -> int:
        """Take every points file out of every partner inbox; returns how many were stored.

        A file leaves the inbox only after it is stored and recorded (``receive``)."""
        async with self.db.unit_of_work() as s:
            inboxes = list(
                (
                    await s.execute(
                        select(PartnerPointsSettings).where(
                            PartnerPointsSettings.inbox_url.is_not(None),
                            PartnerPointsSettings.key_fingerprint.is_not(None),
                        )
                    )
                ).scalars()
            )
            codes = await auth_service.partner_codes(s, [ps.partner_id for ps in inboxes])
        stored = 0
        for ps in inboxes:
            code = codes[ps.partner_id]
            try:
                stored += await self._poll_inbox(str(code), ps)
            except (TransportError, OSError) as exc:
                log.warning(
                    "partner inbox unavailable", extra={"partner": code, "problem": str(exc)}
                )
        return stored

    async def _poll_inbox(self, code: str, ps: PartnerPointsSettings) -> int:
        async with self._inbox_lock(code) as mine:
            # Another worker is polling this inbox: it takes the files (two takers would
            # both store the same file, the second one as a DUPLICATE_FILE).
            return await self._take_from_inbox(code, ps) if mine else 0

    @contextlib.asynccontextmanager
    async def _inbox_lock(self, code: str) -> AsyncIterator[bool]:
        """One poller per partner inbox: a PostgreSQL advisory lock (workers on several
        machines), or a file lock in the data directory (SQLite: one machine)."""
        if self.db.is_sqlite:
            path = storage.work_root(self.settings) / f"inbox-{code}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
            return
        key = {"k": f"points-inbox:{code}"}
        async with self.db.reader() as conn:
            mine = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(hashtext(:k))"), key))
            try:
                yield mine
            finally:
                if mine:
                    await conn.scalar(text("SELECT pg_advisory_unlock(hashtext(:k))"), key)

    async def _take_from_inbox(self, code: str, ps: PartnerPointsSettings) -> int:
        assert ps.inbox_url is not None
        options = transport_options(ps.transport_key_file, ps.known_hosts_file, archive="archive")
        incoming = storage.work_root(self.settings) / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        stored = 0
        async with connected(ps.inbox_url, options) as transport:
            for name in await transport.list_inbox():
                if parse_points_file_name(name) is None:
                    continue
                local = incoming / f"{uuid.uuid4().hex}.pgp"
                try:
                    await transport.fetch(name, local)
                    digest = await asyncio.to_thread(storage.sha256_of, local)
                    async with self.db.unit_of_work() as s:
                        who = await intake.sender(s, code)
                        leftover = await intake.inbox_leftover(s, who.partner_id, name, digest)
                    if leftover is None:
                        row = await intake.receive(
                            self.db,
                            self.settings,
                            who,
                            name,
                            storage.file_chunks(local),
                            source="inbox",
                        )
                        file_id = row.id
                        stored += 1
                    else:
                        file_id = leftover.id
                    self.crash.hit("received")
                    await transport.remove_from_inbox(name)
                    async with self.db.unit_of_work() as s:
                        await intake.mark_removed_from_inbox(s, file_id)
                finally:
                    local.unlink(missing_ok=True)
        return stored
