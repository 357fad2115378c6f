"""Partner points settings, intake of files, and the progress of a file.

Intake contract (``receive``): the bytes are written to ``<data_dir>/points_files/inbound/``
and fsynced, then the file's row is committed; only then does the caller acknowledge (HTTP
202) or take the file out of the partner's inbox. A file is judged on arrival for what its
name and size tell: a name naming another partner (``UNKNOWN_PARTNER``), more bytes than the
partner's limit (``TOO_LARGE``), a sequence number or the exact bytes already accepted for the
partner (``DUPLICATE_FILE``); every later reason is found by the pipeline. A rejected file is
stored too and answered with an exception file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.db import Database, new_id, utcnow
from incentive.errors import InvalidField, NotFound
from incentive.ledger import service as ledger
from incentive.points_files.backends.transports import open_transport
from incentive.points_files.crypto import PointsCrypto, normalize_fingerprint
from incentive.points_files.errors import AnswerNotReady, PartnerNotConfigured, PointsFileNotFound
from incentive.points_files.format import RejectReason, parse_points_file_name
from incentive.points_files.models import (
    FILE_STATES,
    PartnerPointsSettings,
    PointsBatch,
    PointsFile,
)
from incentive.settings import Settings

MAX_LIST_LIMIT = 200
FINAL_STATES = ("delivered",)


# --------------------------------------------------------------------------- paths


def work_root(settings: Settings) -> Path:
    return settings.data_dir / "points_files"


def inbound_path(settings: Settings, file_id: str) -> Path:
    return work_root(settings) / "inbound" / f"{file_id}.pgp"


def plain_path(settings: Settings, file_id: str) -> Path:
    return work_root(settings) / "work" / f"{file_id}.txt"


def answer_plain_path(settings: Settings, file_id: str) -> Path:
    return work_root(settings) / "work" / f"{file_id}.answer.txt"


def answer_path(settings: Settings, file_id: str, answer_name: str) -> Path:
    return work_root(settings) / "outbound" / file_id / answer_name


# --------------------------------------------------------------------------- partner settings


async def partner_id(session: AsyncSession, code: str) -> str:
    """The id of the partner with this code (``NotFound`` if none)."""
    found = await auth_service.partner_id_by_code(session, code)
    if found is None:
        raise NotFound(f"no partner {code!r}", code=code)
    return found


async def points_settings(session: AsyncSession, partner_id: str) -> PartnerPointsSettings:
    """The partner's points settings, created with defaults and a funding account if none."""
    row = await session.get(PartnerPointsSettings, partner_id, populate_existing=True)
    if row is not None:
        return row
    account = await ledger.open_account(
        session,
        owner_type="partner",
        owner_id=partner_id,
        asset="POINTS",
        name="funding",
        allow_negative=True,
    )
    now = utcnow()
    row = PartnerPointsSettings(
        partner_id=partner_id,
        funding_account_id=account.id,
        max_points_per_record=1_000_000,
        max_file_bytes=512 * 1024 * 1024,
        stale_after_days=90,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def set_partner_key(
    session: AsyncSession, crypto: PointsCrypto, code: str, armoured: str
) -> PartnerPointsSettings:
    """Import the partner's public key into the platform keyring and pin its fingerprint."""
    pid = await partner_id(session, code)
    fingerprint = crypto.import_partner_key(armoured)
    row = await points_settings(session, pid)
    row.key_fingerprint = normalize_fingerprint(fingerprint)
    row.updated_at = utcnow()
    await session.flush()
    await auth_service.record_audit(
        session, None, "partner.points_key", f"partner:{pid}", {"fingerprint": fingerprint}
    )
    return row


def _check_url(field: str, url: str) -> str:
    try:
        open_transport(url)
    except ValueError as exc:
        raise InvalidField(field, "transport-url", f"{field}: {exc}") from exc
    return url


async def set_partner_transport(
    session: AsyncSession,
    code: str,
    *,
    inbox_url: str | None,
    outbox_url: str | None,
    key_file: str | None = None,
    known_hosts: str | None = None,
) -> PartnerPointsSettings:
    """Set the inbox/outbox URLs (``file://`` or ``sftp://``), or both ``None`` for HTTP only."""
    if (inbox_url is None) != (outbox_url is None):
        raise InvalidField("outbox", "both-or-neither", "give both --inbox and --outbox, or --http")
    pid = await partner_id(session, code)
    row = await points_settings(session, pid)
    row.inbox_url = None if inbox_url is None else _check_url("inbox", inbox_url)
    row.outbox_url = None if outbox_url is None else _check_url("outbox", outbox_url)
    row.transport_key_file = key_file
    row.known_hosts_file = known_hosts
    row.updated_at = utcnow()
    await session.flush()
    await auth_service.record_audit(
        session,
        None,
        "partner.points_transport",
        f"partner:{pid}",
        {"inbox": row.inbox_url, "outbox": row.outbox_url},
    )
    return row


async def set_partner_limits(
    session: AsyncSession,
    code: str,
    *,
    max_points_per_record: int | None = None,
    max_file_bytes: int | None = None,
    stale_after_days: int | None = None,
    crediting_url: str | None = None,
    use_ledger: bool = False,
) -> PartnerPointsSettings:
    row = await points_settings(session, await partner_id(session, code))
    for field, value in (
        ("max_points_per_record", max_points_per_record),
        ("max_file_bytes", max_file_bytes),
        ("stale_after_days", stale_after_days),
    ):
        if value is not None:
            if value < 1:
                raise InvalidField(field, "positive", f"{field} must be positive")
            setattr(row, field, value)
    if crediting_url is not None:
        if not crediting_url.startswith(("http://", "https://")):
            raise InvalidField("crediting_url", "http-url", "an http:// or https:// URL")
        row.crediting_url = crediting_url
    if use_ledger:
        row.crediting_url = None
    row.updated_at = utcnow()
    await session.flush()
    return row


def settings_json(code: str, row: PartnerPointsSettings) -> dict[str, Any]:
    return {
        "partner": code,
        "key_fingerprint": row.key_fingerprint,
        "inbox_url": row.inbox_url,
        "outbox_url": row.outbox_url,
        "transport_key_file": row.transport_key_file,
        "delivery": "outbox" if row.outbox_url else "download",
        "crediting": row.crediting_url or "ledger",
        "max_points_per_record": row.max_points_per_record,
        "max_file_bytes": row.max_file_bytes,
        "stale_after_days": row.stale_after_days,
        "funding_account_id": row.funding_account_id,
    }


# --------------------------------------------------------------------------- intake


@dataclass(frozen=True)
class StoredBytes:
    path: Path
    size: int
    sha256: str
    truncated: bool


async def store_stream(chunks: AsyncIterator[bytes], target: Path, max_bytes: int) -> StoredBytes:
    """Write ``chunks`` to ``target`` durably (fsync, then rename); stop after ``max_bytes``+1."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    size = 0
    truncated = False
    try:
        with partial.open("wb") as out:
            async for chunk in chunks:
                if size + len(chunk) > max_bytes:
                    truncated = True
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return StoredBytes(target, size, digest.hexdigest(), truncated)


async def file_chunks(path: Path, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


@dataclass(frozen=True)
class Sender:
    partner_id: str
    code: str
    max_file_bytes: int


async def sender(session: AsyncSession, code: str) -> Sender:
    pid = await partner_id(session, code)
    row = await points_settings(session, pid)
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
    file_id = new_id()
    stored = await store_stream(chunks, inbound_path(settings, file_id), who.max_file_bytes)
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
    session: AsyncSession, partner_id: str, file_seq: int, stored: StoredBytes
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


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    file: PointsFile
    partner_code: str
    counts: dict[str, int]
    batches_done: int
    batches_in_flight: int
    batches_total: int
    throughput_per_s: float | None
    eta_s: float | None


async def get_file(session: AsyncSession, file_id: str) -> PointsFile:
    row = await session.get(PointsFile, file_id, populate_existing=True)
    if row is None:
        raise PointsFileNotFound(f"no points file {file_id!r}", id=file_id)
    return row


async def progress(session: AsyncSession, row: PointsFile) -> Progress:
    code = (await auth_service.partner_codes(session, [row.partner_id]))[row.partner_id]
    agg = (
        await session.execute(
            select(
                func.count().filter(PointsBatch.state == "done"),
                func.count().filter(PointsBatch.state == "claimed"),
                func.coalesce(func.sum(PointsBatch.ok_count), 0),
                func.coalesce(func.sum(PointsBatch.failed_count), 0),
            ).where(PointsBatch.file_id == row.id)
        )
    ).one()
    done, in_flight, batch_ok, batch_failed = (int(v) for v in agg)
    if row.state in ("feedback_written", "delivered") or (
        row.state == "credited" and row.ok_count + row.failed_count == row.record_count
    ):
        credited, failed = row.ok_count, row.failed_count
    else:
        credited, failed = batch_ok, row.failed_count + batch_failed
    pending = max(0, row.record_count - credited - failed)
    counts = {"total": row.record_count, "credited": credited, "failed": failed, "pending": pending}
    remaining_lines = max(0, row.last_line - row.next_line + 1) if row.state == "crediting" else 0
    size = row.batch_size or 1
    total = done + in_flight + -(-remaining_lines // size)
    throughput = eta = None
    if row.crediting_started_at is not None:
        end = row.credited_at or utcnow()
        elapsed = max((end - row.crediting_started_at).total_seconds(), 1e-3)
        processed = credited + failed - (row.failed_count if row.state == "crediting" else 0)
        throughput = processed / elapsed
        if row.state == "crediting" and throughput > 0:
            eta = pending / throughput
    return Progress(row, code, counts, done, in_flight, total, throughput, eta)


async def list_files(
    session: AsyncSession,
    *,
    partner_id: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[PointsFile, str]], str | None]:
    """Newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidField("limit", "range", f"limit: 1 to {MAX_LIST_LIMIT}")
    if state is not None and state not in FILE_STATES:
        raise InvalidField("state", "enum", f"state: one of {list(FILE_STATES)}")
    q = select(PointsFile)
    if partner_id is not None:
        q = q.where(PointsFile.partner_id == partner_id)
    if state is not None:
        q = q.where(PointsFile.state == state)
    if cursor:
        try:
            at_text, last_id = cursor.split("~", 1)
            at = datetime.fromisoformat(at_text)
        except ValueError as exc:
            raise InvalidField("cursor", "format", "cursor: the next_cursor of a page") from exc
        q = q.where(
            or_(
                PointsFile.received_at < at,
                (PointsFile.received_at == at) & (PointsFile.id < last_id),
            )
        )
    q = q.order_by(PointsFile.received_at.desc(), PointsFile.id.desc()).limit(limit + 1)
    files = list((await session.execute(q)).scalars())
    next_cursor = None
    if len(files) > limit:
        files = files[:limit]
        last = files[-1]
        next_cursor = f"{last.received_at.isoformat()}~{last.id}"
    codes = await auth_service.partner_codes(session, {f.partner_id for f in files})
    return [(f, codes[f.partner_id]) for f in files], next_cursor


def answer_file(settings: Settings, row: PointsFile) -> Path:
    """The encrypted feedback or exception file, or ``AnswerNotReady`` (409)."""
    if row.answer_name is None or row.state not in (
        "feedback_written",
        "exception_written",
        "delivered",
    ):
        raise AnswerNotReady(f"points file {row.id} is {row.state}; its answer is not ready")
    path = answer_path(settings, row.id, row.answer_name)
    if not path.exists():
        raise AnswerNotReady(f"answer of points file {row.id} is missing on this node")
    return path


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(300.0, 2.0 ** min(attempts, 10)))


__all__: Sequence[str] = [
    "Progress",
    "Sender",
    "answer_file",
    "get_file",
    "list_files",
    "progress",
    "receive",
    "sender",
    "set_partner_key",
    "set_partner_limits",
    "set_partner_transport",
]
