"""Intake: how a points file gets in, uploaded over HTTP or taken from the partner's inbox.

Intake contract (``receive``): the bytes are written to ``<data_dir>/points_files/inbound/``
and fsynced, then the file's row is committed; only then does the caller acknowledge (HTTP
202) or take the file out of the partner's inbox. A file is judged on arrival for what its
name and size tell: a name naming another partner (``UNKNOWN_PARTNER``), more bytes than the
partner's limit (``TOO_LARGE``), a sequence number or the exact bytes already accepted for the
partner (``DUPLICATE_FILE``); every later reason is found by the pipeline. A rejected file is
stored too and answered with an exception file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import Database, new_id, utcnow
from incentive.errors import InvalidField
from incentive.points_files import service, storage
from incentive.points_files.errors import PartnerNotConfigured
from incentive.points_files.format import RejectReason, parse_points_file_name
from incentive.points_files.models import PointsFile
from incentive.settings import Settings


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
