"""Staging on PostgreSQL without a Python parse of each record: the file's ``D`` lines go as
they are into ``COPY``, and one ``INSERT … SELECT`` per chunk computes every record's values,
member and first verdict.

- A chunk of ``D`` lines is checked by one strict pattern over the whole chunk
  (``WELL_FORMED``): a *subset* of what ``format.PointsFileReader`` accepts, chosen so that
  PostgreSQL reads each value exactly as the reader would (times with at most 6 fraction
  digits, offsets within ±15:59, years 1000-9999, no leading/trailing whitespace-only member
  ids). A chunk that passes is sent to ``COPY … (FORMAT csv, DELIMITER '|')`` into a
  temporary table (the quote character is a control character the pattern refuses, so no
  field is ever unquoted or unescaped), numbered in file order by an identity column.
- ``INSERT INTO points_records SELECT …`` then turns the lines into records: points as
  ``bigint`` (or their digits, beyond 64 bits), ``txn_time`` cast by PostgreSQL, the member
  from ``auth.members_table()``, and the verdict with the reasons, order and details of
  ``staging._stage_chunk``.
- Anything off this happy path — a chunk the pattern refuses, a time PostgreSQL refuses,
  more records than allowed, a trailer that is missing, malformed or does not match — makes
  ``stage_lines`` return ``None``: the caller stages the file again with the reader, which
  names the exact problem and line (or accepts what the pattern was too strict for).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    Numeric,
    Text,
    case,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    table,
    text,
    true,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.auth import service as auth_service
from incentive.points_files.format import INT64_MAX, MAX_LINE_BYTES, RecordReason
from incentive.points_files.models import RECORD_COLUMNS, RECORDS, PointsCreditedRecord
from incentive.points_files.repository import FileContext

# One field character: not ``|`` and none of ``format.FORBIDDEN_CHARS`` (tab is allowed).
_CHAR = "[^|\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]"
_TIME = (
    r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)"
)
# Field lengths keep a line under MAX_LINE_BYTES even at 4 bytes per character.
_D_LINE = (
    rf"D\|[A-Za-z0-9_-]{{1,64}}\|{_CHAR}{{1,4000}}\|(?=[0-9]{{1,1000}}\|)0*[1-9][0-9]*"
    rf"\|{_TIME}\|{_CHAR}{{0,10000}}\n"
)
WELL_FORMED = re.compile(rf"(?:{_D_LINE})*")
_BLANK_MEMBER = re.compile(r"^D\|[^|\n]*\|[^\S\n]*\|", re.MULTILINE)
_TRAILER = re.compile(rb"T\|([0-9]{1,1000})\|([0-9]{1,1000})\r?\n")
assert 4 * (64 + 4000 + 1000 + 40 + 10000 + 10) < MAX_LINE_BYTES

LINES = table(
    "points_stage_lines",
    column("n", Integer),
    column("record_id", Text),
    column("member_id", Text),
    column("points_text", Text),
    column("txn_text", Text),
    column("memo", Text),
)
_COPY_COLUMNS = ["kind", "record_id", "member_id", "points_text", "txn_text", "memo"]
_CREATE_LINES = text(
    "CREATE TEMPORARY TABLE points_stage_lines (n integer GENERATED ALWAYS AS IDENTITY, "
    "kind text, record_id text, member_id text, points_text text, txn_text text, memo text) "
    "ON COMMIT DROP"
)


class OffTheHappyPath(Exception):
    """The fast path cannot stage this file; the reader must (it names the problem)."""


@dataclass
class Staged:
    record_count: int = 0
    points_sum: int = 0
    failed: int = 0
    last_line: int = 1


def read_lines(stream: BinaryIO, count: int) -> list[bytes]:
    """Up to ``count`` lines (each cut at the reader's line limit)."""
    readline = stream.readline
    lines: list[bytes] = []
    for _ in range(count):
        line = readline(MAX_LINE_BYTES + 2)
        if not line:
            break
        lines.append(line)
    return lines


def chunk_of(lines: list[bytes]) -> bytes:
    """The ``D`` lines as one CSV chunk (CRLF made LF), or ``OffTheHappyPath``."""
    data = b"".join(lines).replace(b"\r\n", b"\n")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OffTheHappyPath from exc
    if WELL_FORMED.fullmatch(decoded) is None or _BLANK_MEMBER.search(decoded):
        raise OffTheHappyPath
    return data


def check_trailer(line: bytes, staged: Staged, rest: bytes) -> None:
    """The trailer's count and sum match and nothing follows, else ``OffTheHappyPath``."""
    match = _TRAILER.fullmatch(line)
    if match is None or rest:
        raise OffTheHappyPath
    if int(match[1]) != staged.record_count or int(match[2]) != staged.points_sum:
        raise OffTheHappyPath


async def stage_chunk(
    session: AsyncSession,
    ctx: FileContext,
    data: bytes,
    first_line: int,
    oldest: datetime,
    newest: datetime,
) -> tuple[int, int, int]:
    """COPY one checked chunk and store its records from ``first_line`` on; returns (records,
    their points sum, failures). A value PostgreSQL refuses raises ``OffTheHappyPath`` (the
    caller's transaction must then be rolled back)."""
    await session.execute(_CREATE_LINES)
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    await driver.copy_to_table(
        "points_stage_lines",
        source=io.BytesIO(data),
        columns=_COPY_COLUMNS,
        format="csv",
        delimiter="|",
        quote="\x01",
        force_not_null=["memo"],
    )
    count, total = (
        await session.execute(
            select(
                func.count(), cast(func.sum(cast(LINES.c.points_text, Numeric)), Text)
            ).select_from(LINES)
        )
    ).one()
    try:
        failed = await session.scalar(_insert_records(ctx, first_line, oldest, newest))
    except DBAPIError as exc:  # a date or time PostgreSQL refuses (e.g. 30 February)
        raise OffTheHappyPath from exc
    return int(count), int(total or 0), int(failed or 0)


def _insert_records(ctx: FileContext, first_line: int, oldest: datetime, newest: datetime) -> Any:
    line = LINES.c
    done = PointsCreditedRecord
    # One index probe per line each (LIMIT keeps PostgreSQL from turning them into joins
    # planned on the tables' statistics, which may be stale): the member by its unique
    # username, and whether (partner, record id) was credited before.
    customers = auth_service.members_table()
    members = (
        select(customers.c.user_id, customers.c.blocked)
        .where(customers.c.username == line.member_id)
        .limit(1)
        .lateral("member")
    )
    credited = (
        select(done.record_id)
        .where(done.partner_id == ctx.partner_id, done.record_id == line.record_id)
        .limit(1)
        .lateral("credited")
    )
    digits = func.ltrim(line.points_text, "0")
    value = cast(digits, Numeric)
    txn = cast(line.txn_text, DateTime(timezone=True))
    verdicts = [  # (when, reason, detail): the order of staging._stage_chunk
        (
            credited.c.record_id.is_not(None),
            RecordReason.DUPLICATE_RECORD,
            "record_id already credited",
        ),
        (members.c.user_id.is_(None), RecordReason.UNKNOWN_MEMBER, "no member with this member_id"),
        (members.c.blocked, RecordReason.MEMBER_BLOCKED, "the member is blocked"),
        (
            value > ctx.max_points,
            RecordReason.INVALID_POINTS,
            f"points over the per-record limit {ctx.max_points}",
        ),
        (
            txn < literal(oldest, DateTime(timezone=True)),
            RecordReason.STALE_TXN,
            f"txn_time older than {ctx.stale_after_days} days",
        ),
        (
            txn > literal(newest, DateTime(timezone=True)),
            RecordReason.STALE_TXN,
            "txn_time in the future",
        ),
    ]
    reason = case(*((when, literal(str(r))) for when, r, _ in verdicts), else_=None)
    detail = case(*((when, literal(d)) for when, _, d in verdicts), else_=literal(""))
    rows = select(
        literal(ctx.id),
        line.n + (first_line - 1),
        line.record_id,
        line.member_id,
        case((value <= INT64_MAX, cast(digits, BigInteger)), else_=None),
        case((value > INT64_MAX, digits), else_=None),
        txn,
        line.memo,
        members.c.user_id,
        case((reason.is_(None), literal("valid")), else_=literal("failed")),
        reason,
        detail,
    ).select_from(LINES.outerjoin(members, true()).outerjoin(credited, true()))
    stored = (
        insert(RECORDS)
        .from_select(
            list(RECORD_COLUMNS),
            rows,
        )
        .returning(RECORDS.c.state)
        .cte("stored")
    )
    return select(func.count()).select_from(stored).where(stored.c.state == "failed")
