"""Crediting, shared by every worker: ``validated`` -> ``crediting`` -> ``credited``.

Workers claim line ranges (``points_batches``) by advancing the file's cursor, sized by the
adaptive limiter of the crediting target; a batch whose lease expired is taken over. A batch
commits, in one transaction, the credited record ids (unique per partner forever), the ledger
transfers (idempotency key ``partner:<code>:<record_id>``), the record states and the batch's
``done`` mark, so a record is credited at most once whatever is killed when. A target outside
the database (``HttpTarget``) is called before that transaction, with only the records not yet
credited; it must treat the key as an idempotency key, since a batch is re-sent after a crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.config.keys import POINTS_FILE_BATCH_SIZE, POINTS_FILE_WORKERS
from incentive.config.live import live_config
from incentive.db import insert as db_insert
from incentive.db import utcnow
from incentive.points_files import metrics, repository
from incentive.points_files.backends.targets import (
    CreditingTarget,
    CreditItem,
    CreditPartner,
    CreditRefusal,
    HttpTarget,
    LedgerTarget,
    TargetUnavailable,
)
from incentive.points_files.format import RecordReason, sanitize_detail
from incentive.points_files.limiter import AdaptiveLimiter, LimiterSettings
from incentive.points_files.models import (
    RECORDS,
    PointsBatch,
    PointsCreditedRecord,
    PointsFile,
    PointsRecord,
)
from incentive.points_files.repository import ClaimedBatch, FileContext, LostClaim
from incentive.points_files.worker import Worker

log = logging.getLogger(__name__)


async def start(worker: Worker, file_id: str) -> None:
    """``validated`` -> ``crediting``: the cursor at the first record line."""
    async with worker.db.unit_of_work() as s:
        await repository.advance(
            s,
            worker.id,
            file_id,
            "validated",
            "crediting",
            next_line=2,
            crediting_started_at=utcnow(),
        )


async def finish(worker: Worker, file_id: str) -> bool:
    """``crediting`` -> ``credited`` once the cursor is past the end and no batch is open."""
    async with worker.db.unit_of_work() as s:
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


class Crediting:
    """This process's share of crediting: one target and one limiter per crediting system
    (the limiter's bounds follow the live ``points_file.batch_size``/``workers`` keys)."""

    def __init__(
        self,
        worker: Worker,
        limiter_settings: LimiterSettings,
        *,
        credit_attempts: int,
        retry_base_s: float,
    ) -> None:
        self.worker = worker
        self.credit_attempts = credit_attempts
        self.retry_base_s = retry_base_s
        self._limiter_template = limiter_settings
        self._limiters: dict[str, tuple[tuple[int, int], AdaptiveLimiter]] = {}
        self._targets: dict[str, CreditingTarget] = {}

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

    async def credit_file(self, file_id: str) -> bool:
        """Credit batches of one file with the limiter's concurrency until none is claimable;
        ``True`` if a batch was claimed or the file moved to ``credited``."""
        async with self.worker.db.unit_of_work() as s:
            ctx = await repository.file_context(s, file_id)
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
        return await finish(self.worker, file_id) or did

    async def _claim_batch(self, file_id: str, limiter: AdaptiveLimiter) -> ClaimedBatch | None:
        worker = self.worker
        until = worker.lease_until()
        async with worker.db.unit_of_work() as s:
            batch = await repository.take_over_batch(s, worker.id, file_id, until)
            if batch is not None:
                metrics.BATCHES.labels("taken_over").inc()
            else:
                batch = await repository.claim_lines(
                    s,
                    worker.id,
                    file_id,
                    until,
                    size=limiter.batch_size,
                    concurrency=limiter.concurrency,
                )
                if batch is None:
                    return None
        worker.crash.hit("batch_claimed")
        return batch

    async def _load_items(self, file_id: str, batch: ClaimedBatch) -> list[CreditItem]:
        async with self.worker.db.unit_of_work() as s:
            return await _items(s, file_id, batch)

    async def _run_batch(
        self,
        ctx: FileContext,
        batch: ClaimedBatch,
        target: CreditingTarget,
        limiter: AdaptiveLimiter,
    ) -> None:
        worker = self.worker
        partner = CreditPartner(ctx.partner_id, ctx.code, ctx.funding_account_id, ctx.id)
        given_up = batch.attempts > worker.settings.points_stage_attempts
        if isinstance(target, LedgerTarget) and not given_up and not worker.db.is_sqlite:
            started = time.monotonic()
            await self._credit_staged_batch(ctx, batch, target, partner, started)
            limiter.record_success(time.monotonic() - started)
            metrics.TARGET_CALLS.labels(target.name, "ok").inc()
            return
        items = await self._load_items(ctx.id, batch)
        if given_up:
            # taken over after that many workers failed or died on it: end it, so the file
            # is answered instead of being retried forever
            detail = f"could not be credited after {batch.attempts - 1} attempts"
            refused = [CreditRefusal(i.line_no, detail) for i in items]
            await self._commit_batch(
                ctx, batch, items, refused, target, partner, time.monotonic(), skip_target=True
            )
            log.error("points batch given up", extra={"file_id": ctx.id, "batch": batch.id})
            return
        for attempt in range(1, self.credit_attempts + 1):
            started = time.monotonic()
            try:
                if target.in_transaction:
                    await self._commit_batch(ctx, batch, items, [], target, partner, started)
                else:
                    async with worker.db.unit_of_work() as s:
                        already = await repository.credited_ids(
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
                async with worker.db.unit_of_work() as s:
                    await repository.fence_batch(s, worker.id, batch.id, worker.lease_until())
                delay = self.retry_base_s * 2 ** (attempt - 1)
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 jitter
                continue
            limiter.record_success(time.monotonic() - started)
            metrics.TARGET_CALLS.labels(target.name, "ok").inc()
            return

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
        worker = self.worker
        failures: dict[int, tuple[str, str]] = {
            r.line_no: (str(RecordReason.CREDIT_FAILED), r.detail) for r in refused
        }
        async with worker.db.unit_of_work() as s:
            await repository.fence_batch(s, worker.id, batch.id, worker.lease_until())
            wanted = [i for i in items if i.line_no not in failures]
            won = await _claim_record_ids(s, ctx, wanted)
            for i in wanted:
                if i.record_id not in won:
                    failures[i.line_no] = (
                        str(RecordReason.DUPLICATE_RECORD),
                        "record_id already credited",
                    )
            winners = [i for i in wanted if i.record_id in won]
            if target.in_transaction and not skip_target and winners:
                refusals = await target.credit(partner, winners, s)
                await _release_refused(s, ctx, winners, refusals)
                for r in refusals:
                    failures[r.line_no] = (str(RecordReason.CREDIT_FAILED), r.detail)
            worker.crash.hit("batch_credited")
            await _fail_records(s, ctx.id, failures)
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
            await _mark_done(
                s, worker.id, batch, len(ok), len(failures), sum(i.points for i in ok), started
            )
        worker.crash.hit("batch_committed")
        _count_done(len(ok), len(failures))

    async def _credit_staged_batch(
        self,
        ctx: FileContext,
        batch: ClaimedBatch,
        target: LedgerTarget,
        partner: CreditPartner,
        started: float,
    ) -> None:
        """``_commit_batch`` for the ledger on PostgreSQL, set-based: the records never come
        to Python unless the ledger refuses the batch (then ``target.credit`` isolates the
        refused ones, exactly as ``_commit_batch`` does). Same transaction, same guarantees."""
        worker = self.worker
        async with worker.db.unit_of_work() as s:
            await repository.fence_batch(s, worker.id, batch.id, worker.lease_until())
            failed = await repository.claim_batch_record_ids(s, ctx.partner_id, ctx.id, batch)
            # Marked before the ledger's statements, so that the balances' row locks (the
            # funding account's above all) are the last taken and held the shortest.
            ok, points = await repository.mark_batch_credited(s, ctx.id, batch)
            staged = repository.batch_records(ctx.id, batch, "credited")
            if not await target.credit_staged(partner, staged, s):
                winners = await _items(s, ctx.id, batch, "credited")
                refusals = await target.credit(partner, winners, s)
                await _release_refused(s, ctx, winners, refusals)
                await _fail_records(
                    s,
                    ctx.id,
                    {r.line_no: (str(RecordReason.CREDIT_FAILED), r.detail) for r in refusals},
                )
                refused = {r.line_no for r in refusals}
                failed += len(refused)
                ok -= len(refused)
                points -= sum(i.points for i in winners if i.line_no in refused)
            worker.crash.hit("batch_credited")
            await _mark_done(s, worker.id, batch, ok, failed, points, started)
        worker.crash.hit("batch_committed")
        _count_done(ok, failed)


async def _mark_done(
    session: AsyncSession,
    worker_id: str,
    batch: ClaimedBatch,
    ok: int,
    failed: int,
    points: int,
    started: float,
) -> None:
    """The batch's outcome, in the transaction that credited it."""
    await session.execute(
        update(PointsBatch)
        .where(PointsBatch.id == batch.id)
        .values(
            state="done",
            done_by=worker_id,
            ok_count=ok,
            failed_count=failed,
            points_credited=points,
            latency_ms=int((time.monotonic() - started) * 1000),
            done_at=utcnow(),
        )
    )


def _count_done(ok: int, failed: int) -> None:
    metrics.BATCHES.labels("done").inc()
    metrics.RECORDS_CREDITED.labels("ok").inc(ok)
    metrics.RECORDS_CREDITED.labels("failed").inc(failed)


async def _items(
    session: AsyncSession, file_id: str, batch: ClaimedBatch, state: str = "valid"
) -> list[CreditItem]:
    """The batch's records in ``state`` (``valid``: still to credit), in line order."""
    # Core columns (not ORM attributes): rows come back without the ORM's per-row
    # loading, which was a sixth of crediting's CPU.
    r = RECORDS.c
    rows = await session.execute(
        select(r.line_no, r.record_id, r.member_id, r.user_id, r.points, r.txn_time, r.memo)
        .where(
            r.file_id == file_id,
            r.line_no.between(batch.first_line, batch.last_line),
            r.state == state,
        )
        .order_by(r.line_no)
    )
    return [CreditItem(*row) for row in rows]


async def _release_refused(
    session: AsyncSession,
    ctx: FileContext,
    winners: list[CreditItem],
    refusals: list[CreditRefusal],
) -> None:
    """The refused records' ids were claimed with the batch: give them back."""
    if not refusals:
        return
    lines = {r.line_no for r in refusals}
    await session.execute(
        delete(PointsCreditedRecord).where(
            PointsCreditedRecord.partner_id == ctx.partner_id,
            PointsCreditedRecord.record_id.in_(
                [i.record_id for i in winners if i.line_no in lines]
            ),
        )
    )


async def _fail_records(
    session: AsyncSession, file_id: str, failures: dict[int, tuple[str, str]]
) -> None:
    """Line -> (reason, detail): those records become ``failed``."""
    if failures:
        await session.execute(
            update(RECORDS)
            .where(RECORDS.c.file_id == file_id, RECORDS.c.line_no == bindparam("ln"))
            .values(state="failed", reason=bindparam("rsn"), detail=bindparam("dtl")),
            [
                {"ln": line, "rsn": reason, "dtl": sanitize_detail(detail)}
                for line, (reason, detail) in failures.items()
            ],
        )


async def _claim_record_ids(
    session: AsyncSession, ctx: FileContext, items: list[CreditItem]
) -> set[str]:
    """Insert (partner, record id) for each item; returns the ids this call inserted."""
    if not items:
        return set()
    now = utcnow()
    if session.get_bind().dialect.name == "sqlite":
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
