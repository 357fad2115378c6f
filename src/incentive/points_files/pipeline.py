"""The points-file pipeline: durable stages driven by any number of workers.

Stages of a file (``points_files.state``), each committed before the next starts::

    received -> decrypted -> staged -> validated -> crediting -> credited
             -> feedback_written -> delivered
    (any stage before crediting) -> rejected -> exception_written -> delivered

Where each stage lives:

- ``intake``: files in, uploaded over HTTP or taken from partner inboxes (``received``).
- ``staging``: decrypt, stage the records chunk by chunk, flag in-file duplicates
  (``decrypted``, ``staged``, ``validated``), or reject the whole file (``rejected``).
- ``crediting``: batches of records credited by every worker together (``crediting``,
  ``credited``).
- ``answers``: the feedback or exception file, and its delivery (``feedback_written``,
  ``exception_written``, ``delivered``).
- ``repository``: the claims, leases and fences that let workers share all this.

``PointsPipeline`` is one worker's driver: it claims whatever stage work is due, runs it, and
joins the crediting of every file being credited. ``INCENTIVE_POINTS_CRASH_AT=<point>:<n>``
makes the process kill itself at a named point (``worker.CRASH_POINTS``); the crash-safety
tests use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import timedelta

from sqlalchemy import func, select

from incentive.db import Database, utcnow
from incentive.points_files import answers, crediting, intake, metrics, repository, staging
from incentive.points_files.crediting import Crediting
from incentive.points_files.errors import StorageFull
from incentive.points_files.format import RejectReason, sanitize_detail
from incentive.points_files.limiter import AdaptiveLimiter, LimiterSettings
from incentive.points_files.models import PointsFile
from incentive.points_files.repository import LostClaim
from incentive.points_files.worker import CrashPoints, Worker, default_worker_id
from incentive.settings import Settings

log = logging.getLogger(__name__)

STORAGE_RETRY_SECONDS = 30.0
# A stage before crediting that keeps failing rejects the file with the format's nearest
# whole-file code (the format has no code of its own for our failures): the message could not
# be read (``received``), or its content could not be taken in (later stages). Stages from
# ``credited`` on are past the point of no return (records are credited): they keep being
# retried with backoff, their error recorded in ``stage_error``.
GIVE_UP_REASON = {
    "received": RejectReason.DECRYPT_FAILED,
    "decrypted": RejectReason.BAD_FORMAT,
    "staged": RejectReason.BAD_FORMAT,
    "validated": RejectReason.BAD_FORMAT,
}

# States with stage work for one worker to claim (``crediting`` is shared, see ``run_once``).
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
        self.worker = Worker(
            db,
            settings,
            worker_id or default_worker_id(),
            timedelta(seconds=settings.points_lease_seconds),
            CrashPoints(
                crash_spec
                if crash_spec is not None
                else os.environ.get("INCENTIVE_POINTS_CRASH_AT")
            ),
        )
        self.crediting = Crediting(
            self.worker,
            limiter_settings or LimiterSettings(),
            credit_attempts=credit_attempts,
            retry_base_s=retry_base_s,
        )

    def limiter(self, target_name: str) -> AdaptiveLimiter:
        """The process's limiter for one crediting target (see ``Crediting.limiter``)."""
        return self.crediting.limiter(target_name)

    async def aclose(self) -> None:
        await self.crediting.aclose()

    async def poll_inboxes(self) -> int:
        """Take every points file out of every partner inbox; returns how many were stored."""
        return await intake.poll_inboxes(self.worker)

    async def run_once(self) -> bool:
        """Do every piece of work that can be claimed now; ``True`` if anything was done."""
        did = False
        while (job := await self._claim_file()) is not None:
            did = True
            try:
                await self._run_stage(*job)
            except LostClaim as exc:
                log.warning("points file claim lost", extra={"problem": str(exc)})
            except StorageFull as exc:
                await self._wait_for_storage(job[0], exc)
            except Exception as exc:
                log.exception("points file stage failed", extra={"file_id": job[0]})
                await self._stage_failed(*job, exc)
        async with self.worker.db.unit_of_work() as s:
            being_credited = await repository.files_crediting(s)
        for file_id in being_credited:
            did = await self.crediting.credit_file(file_id) or did
        return did

    async def pending_files(self) -> int:
        async with self.worker.db.unit_of_work() as s:
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
                    next_poll = time.monotonic() + self.worker.settings.points_poll_seconds
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
        async with self.worker.db.unit_of_work() as s:
            return await repository.claim_file(s, self.worker.id, self.worker.lease, STAGE_STATES)

    async def _wait_for_storage(self, file_id: str, exc: StorageFull) -> None:
        """The disk is nearly full: the file stays where it is (not the file's fault, so no
        attempt is counted) and is retried later."""
        log.error("points file work refused: storage full", extra={"file_id": file_id})
        async with self.worker.db.unit_of_work() as s:
            await repository.release_file(
                s,
                self.worker.id,
                file_id,
                stage_error=sanitize_detail(str(exc.detail)),
                next_attempt_at=utcnow() + timedelta(seconds=STORAGE_RETRY_SECONDS),
            )

    async def _stage_failed(self, file_id: str, state: str, exc: Exception) -> None:
        """A stage raised something unexpected: retry it later with backoff, and after
        ``settings.points_stage_attempts`` failures end the file with an answer instead (a
        file before crediting is rejected as a whole; nothing of it was credited)."""
        w = self.worker
        settings = w.settings
        error = sanitize_detail(f"{type(exc).__name__}: {exc}")
        async with w.db.unit_of_work() as s:
            attempts = 1 + int(
                await s.scalar(select(PointsFile.stage_attempts).where(PointsFile.id == file_id))
                or 0
            )
        final = attempts >= settings.points_stage_attempts
        if final and state in GIVE_UP_REASON:
            reason = GIVE_UP_REASON[state]
            await staging.reject(
                w,
                file_id,
                state,
                reason,
                f"the file could not be processed after {attempts} attempts; nothing in it "
                "was credited; please send it again",
            )
            log.error(
                "points file given up",
                extra={"file_id": file_id, "stage": state, "reason": str(reason)},
            )
            return
        delay = min(300.0, settings.points_stage_retry_seconds * 2 ** min(attempts - 1, 16))
        async with w.db.unit_of_work() as s:
            await repository.release_file(
                s,
                w.id,
                file_id,
                stage_attempts=attempts,
                stage_error=error,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
            )

    async def _run_stage(self, file_id: str, state: str) -> None:
        started = time.monotonic()
        w = self.worker
        match state:
            case "received":
                await staging.decrypt(w, file_id)
            case "decrypted":
                await staging.stage(w, file_id)
            case "staged":
                await staging.validate(w, file_id)
            case "validated":
                await crediting.start(w, file_id)
            case "credited":
                await answers.write_feedback_file(w, file_id)
            case "rejected":
                await answers.write_exception_file(w, file_id)
            case "feedback_written" | "exception_written":
                await answers.deliver(w, file_id, state)
        metrics.STAGE_SECONDS.labels(state).observe(time.monotonic() - started)
