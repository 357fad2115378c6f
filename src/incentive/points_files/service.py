"""Partner points settings, and the files as operators and partners see them (progress,
listing, the answer to download). How files get in is ``intake.py``; what happens to them is
the pipeline (``pipeline.py`` and its stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.db import utcnow
from incentive.errors import InvalidField, NotFound
from incentive.kit.pagination import KeyId, Keyset, KeyTime
from incentive.ledger import service as ledger
from incentive.points_files import storage
from incentive.points_files.backends.transports import open_transport
from incentive.points_files.crypto import PointsCrypto, normalize_fingerprint
from incentive.points_files.errors import AnswerNotReady, PointsFileNotFound
from incentive.points_files.format import INT64_MAX
from incentive.points_files.models import (
    DEFAULT_MAX_RECORDS,
    FILE_STATES,
    PartnerPointsSettings,
    PointsBatch,
    PointsFile,
    max_plain_bytes_of,
)
from incentive.settings import Settings

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
        max_records=DEFAULT_MAX_RECORDS,
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
    max_records: int | None = None,
    max_plain_bytes: int | None = None,
    stale_after_days: int | None = None,
    crediting_url: str | None = None,
    use_ledger: bool = False,
) -> PartnerPointsSettings:
    row = await points_settings(session, await partner_id(session, code))
    for field, value in (
        ("max_points_per_record", max_points_per_record),
        ("max_file_bytes", max_file_bytes),
        ("max_records", max_records),
        ("max_plain_bytes", max_plain_bytes),
        ("stale_after_days", stale_after_days),
    ):
        if value is not None:
            if not 1 <= value <= INT64_MAX:
                raise InvalidField(field, "positive", f"{field} must be 1 to 2^63-1")
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
        "max_records": row.max_records,
        "max_plain_bytes": max_plain_bytes_of(row.max_records, row.max_plain_bytes),
        "stale_after_days": row.stale_after_days,
        "funding_account_id": row.funding_account_id,
    }


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


FILE_ORDER = Keyset((PointsFile.received_at, PointsFile.id), tuple[KeyTime, KeyId])


async def list_files(
    session: AsyncSession,
    *,
    partner_id: str | None,
    state: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[PointsFile, str]], str | None]:
    """Newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
    if state is not None and state not in FILE_STATES:
        raise InvalidField("state", "enum", f"state: one of {list(FILE_STATES)}")
    q = select(PointsFile)
    if partner_id is not None:
        q = q.where(PointsFile.partner_id == partner_id)
    if state is not None:
        q = q.where(PointsFile.state == state)
    page = await FILE_ORDER.fetch(session, q, cursor=cursor, limit=limit)
    files, next_cursor = page.items, page.next_cursor
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
    path = storage.answer_path(settings, row.id, row.answer_name)
    if not path.exists():
        raise AnswerNotReady(f"answer of points file {row.id} is missing on this node")
    return path


__all__: Sequence[str] = [
    "Progress",
    "answer_file",
    "get_file",
    "list_files",
    "partner_id",
    "points_settings",
    "progress",
    "set_partner_key",
    "set_partner_limits",
    "set_partner_transport",
    "settings_json",
]
