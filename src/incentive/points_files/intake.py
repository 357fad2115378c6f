"""Intake: how a points file gets in, uploaded over HTTP or taken from the partner's inbox.

Intake contract (``receive``): the bytes are written to ``<data_dir>/points_files/inbound/``
and fsynced, then the file's row is committed; only then does the caller acknowledge (HTTP
202) or take the file out of the partner's inbox. A file is judged on arrival for what its
name and size tell: a name naming another partner (``UNKNOWN_PARTNER``), more bytes than the
partner's limit (``TOO_LARGE``), a sequence number or the exact bytes already accepted for the
partner (``DUPLICATE_FILE``); every later reason is found by the pipeline. A rejected file is
stored too and answered with an exception file.

Inboxes are polled by one worker at a time per partner (``inbox_lock``): a PostgreSQL
advisory lock, or a file lock in the data directory on SQLite. A file stored but not yet taken
out of the inbox when a worker died is recognised as our own leftover, not as a resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.db import Database, new_id, utcnow
from incentive.errors import InvalidField
from incentive.points_files import service, storage
from incentive.points_files.backends.transports import TransportOptions, connected
from incentive.points_files.errors import PartnerNotConfigured, TransportError
from incentive.points_files.format import RejectReason, parse_points_file_name
from incentive.points_files.models import PartnerPointsSettings, PointsFile
from incentive.points_files.worker import Worker
from incentive.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sender:
    """A partner allowed to send points files (its OpenPGP key is registered)."""

    partner_id: str
    code: str
    max_file_bytes: int


async def sender(session: AsyncSession, code: str) -> Sender:
    pid = await service.partner_id(session, code)
    row = await service.points_settings(session, pid)
    if row.key_fingerprint is None:
        raise PartnerNotConfigured(
            f"partner {code!r} has no OpenPGP key registered (incentive partners set-key)"
        )
    return Sender(pid, code, row.max_file_bytes)


async def receive(
    db: Database,
    settings: Settings,
    who: Sender,
    name: str,
    chunks: AsyncIterator[bytes],
    *,
    source: str,
) -> PointsFile:
    """Store one inbound file durably and record it (state ``received`` or ``rejected``).

    Returns once the row is committed: the caller may then acknowledge the file.
    """
    parsed = parse_points_file_name(name)
    if parsed is None:
        raise InvalidField(
            "name", "points-file-name", "name: POINTS_<PARTNER>_<YYYYMMDD>_<SEQ>.txt.pgp"
        )
    storage.ensure_free_space(settings)
    file_id = new_id()
    stored = await storage.store_stream(
        chunks, storage.inbound_path(settings, file_id), who.max_file_bytes
    )
    reason: tuple[RejectReason, str] | None = None
    if parsed.partner_code != who.code:
        reason = (
            RejectReason.UNKNOWN_PARTNER,
            f"file name names partner {parsed.partner_code!r}, sent by {who.code!r}",
        )
    elif stored.truncated:
        reason = (RejectReason.TOO_LARGE, f"more than {who.max_file_bytes} bytes")
        stored.path.unlink(missing_ok=True)
    now = utcnow()
    async with db.unit_of_work() as session:
        values: dict[str, Any] = {
            "id": file_id,
            "partner_id": who.partner_id,
            "name": name,
            "base": parsed.base,
            "file_seq": parsed.file_seq,
            "source": source,
            "size_bytes": stored.size,
            "sha256": stored.sha256,
            "received_at": now,
            "updated_at": now,
        }
        if reason is None:
            reason = await _duplicate_reason(session, who.partner_id, parsed.file_seq, stored)
        if reason is None:
            accepted = PointsFile(
                **values,
                state="received",
                accepted_seq=parsed.file_seq,
                accepted_sha256=stored.sha256,
            )
            try:
                async with session.begin_nested():
                    session.add(accepted)
                    await session.flush()
                return accepted
            except IntegrityError:  # a concurrent twin won the unique index
                reason = (RejectReason.DUPLICATE_FILE, "the same file arrived concurrently")
        rejected = PointsFile(
            **values, state="rejected", reason_code=str(reason[0]), reason_detail=reason[1]
        )
        session.add(rejected)
        await session.flush()
    return rejected


async def _duplicate_reason(
    session: AsyncSession, partner_id: str, file_seq: int, stored: storage.StoredBytes
) -> tuple[RejectReason, str] | None:
    hit = (
        await session.execute(
            select(PointsFile.id, PointsFile.accepted_seq, PointsFile.name)
            .where(
                PointsFile.partner_id == partner_id,
                or_(
                    PointsFile.accepted_seq == file_seq,
                    PointsFile.accepted_sha256 == stored.sha256,
                ),
            )
            .limit(1)
        )
    ).first()
    if hit is None:
        return None
    if hit.accepted_seq == file_seq:
        return (
            RejectReason.DUPLICATE_FILE,
            f"file_seq {file_seq} was already received ({hit.name})",
        )
    return (RejectReason.DUPLICATE_FILE, f"the same file was already received as {hit.name}")


async def inbox_leftover(
    session: AsyncSession, partner_id: str, name: str, sha256: str
) -> PointsFile | None:
    """A stored inbox file with this name and content never taken out of the inbox."""
    return (
        await session.execute(
            select(PointsFile).where(
                PointsFile.partner_id == partner_id,
                PointsFile.name == name,
                PointsFile.sha256 == sha256,
                PointsFile.source == "inbox",
                PointsFile.inbox_removed_at.is_(None),
            )
        )
    ).scalar_one_or_none()


async def mark_removed_from_inbox(session: AsyncSession, file_id: str) -> None:
    await session.execute(
        update(PointsFile).where(PointsFile.id == file_id).values(inbox_removed_at=utcnow())
    )


# --------------------------------------------------------------------------- inboxes


async def poll_inboxes(worker: Worker) -> int:
    """Take every points file out of every partner inbox; returns how many were stored.

    A file leaves the inbox only after it is stored and recorded (``receive``)."""
    async with worker.db.unit_of_work() as s:
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
            async with inbox_lock(worker, code) as mine:
                # Another worker is polling this inbox: it takes the files (two takers would
                # both store the same file, the second one as a DUPLICATE_FILE).
                if mine:
                    stored += await _take_from_inbox(worker, code, ps)
        except (TransportError, OSError) as exc:
            log.warning("partner inbox unavailable", extra={"partner": code, "problem": str(exc)})
    return stored


@contextlib.asynccontextmanager
async def inbox_lock(worker: Worker, code: str) -> AsyncIterator[bool]:
    """One poller per partner inbox: a PostgreSQL advisory lock (workers on several
    machines), or a file lock in the data directory (SQLite: one machine)."""
    if worker.db.is_sqlite:
        path = storage.work_root(worker.settings) / f"inbox-{code}.lock"
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
    async with worker.db.reader() as conn:
        mine = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(hashtext(:k))"), key))
        try:
            yield mine
        finally:
            if mine:
                await conn.scalar(text("SELECT pg_advisory_unlock(hashtext(:k))"), key)


async def _take_from_inbox(worker: Worker, code: str, ps: PartnerPointsSettings) -> int:
    assert ps.inbox_url is not None
    options = TransportOptions.for_partner(
        ps.transport_key_file, ps.known_hosts_file, archive="archive"
    )
    incoming = storage.work_root(worker.settings) / "incoming"
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
                async with worker.db.unit_of_work() as s:
                    who = await sender(s, code)
                    leftover = await inbox_leftover(s, who.partner_id, name, digest)
                if leftover is None:
                    row = await receive(
                        worker.db,
                        worker.settings,
                        who,
                        name,
                        storage.file_chunks(local),
                        source="inbox",
                    )
                    file_id = row.id
                    stored += 1
                else:
                    file_id = leftover.id
                worker.crash.hit("received")
                await transport.remove_from_inbox(name)
                async with worker.db.unit_of_work() as s:
                    await mark_removed_from_inbox(s, file_id)
            finally:
                local.unlink(missing_ok=True)
    return stored
