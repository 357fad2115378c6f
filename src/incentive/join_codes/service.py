"""Join codes (预制码): generated in bulk for a campaign, redeemed once by a merchant to join it.

Contract:

- A code is ``prefix + 10 characters`` of ``ALPHABET`` (31 symbols: no 0/O/1/I/L), each drawn
  uniformly from ``secrets`` bytes: 49.5 bits of randomness. Codes are unique across the
  platform (the primary key); a random collision is dropped by ``ON CONFLICT DO NOTHING`` and
  the shortfall drawn again, so ``generate`` always writes exactly ``count`` new codes.
- Codes are generated only for a campaign that is neither ended nor cancelled; a code is
  redeemed only while its campaign is neither ended nor cancelled and its window has not
  closed (``CampaignClosed``).
- ``redeem`` moves the code ``unused -> used`` with one conditional UPDATE (``WHERE status =
  'unused'``): under any concurrency exactly one merchant wins a code. The merchant joins with
  one INSERT into ``campaign_merchants`` (primary key campaign + merchant): a merchant joins a
  campaign once; a second code of the same campaign is refused (``AlreadyJoined``) and stays
  unused, since both writes are in one savepoint.
- ``void`` moves unused codes to ``void`` (one UPDATE); used codes are never voided.
- Operator changes are audited (``auth.service.record_audit``). Nothing here commits.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from incentive.auth import service as auth_service
from incentive.campaigns import service as campaigns
from incentive.campaigns.errors import CampaignClosed
from incentive.db import UTCDateTime, one_of, utcnow
from incentive.db import insert as db_insert
from incentive.errors import InvalidField
from incentive.join_codes.errors import AlreadyJoined, CodeUsed, CodeVoid, JoinCodeNotFound
from incentive.join_codes.models import CODE_MAX_LENGTH, CampaignMerchant, JoinCode
from incentive.kit.codes import ALPHABET, RANDOM_LENGTH, normalize_code, random_codes
from incentive.kit.idempotency import Caller
from incentive.kit.pagination import KeyId, Keyset, KeyTime, Slice

PREFIX_MAX_LENGTH = 8
PREFIX_RULE = re.compile(f"[{ALPHABET}]{{1,{PREFIX_MAX_LENGTH}}}")
MAX_COUNT = 1_000_000
CLOSED = ("ended", "cancelled")
# Codes written per statement (and drawn per batch): bounds memory whatever the count.
BATCH = 100_000
EXPORT_CHUNK = 5_000
EXPORT_COLUMNS = (
    "code",
    "status",
    "created_at",
    "redeemed_by_merchant_id",
    "redeemed_by_user_id",
    "redeemed_at",
    "voided_at",
)
assert PREFIX_MAX_LENGTH + RANDOM_LENGTH <= CODE_MAX_LENGTH


def check_prefix(prefix: str | None) -> str:
    if not prefix:
        return ""
    if not PREFIX_RULE.fullmatch(prefix):
        raise InvalidField(
            "prefix",
            "alphabet",
            f"prefix: 1 to {PREFIX_MAX_LENGTH} characters of {ALPHABET} (upper case, no 0/O/1/I/L)",
        )
    return prefix


def _actor_name(actor: Caller | None) -> str:
    return actor.id if actor is not None else "cli"


# --------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Generated:
    campaign_id: str
    count: int
    prefix: str
    redrawn: int  # random collisions drawn again


_BATCH_TABLE = "join_code_batch"


async def _prepare_batch_table(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_BATCH_TABLE} (code text) ON COMMIT DROP")
        )
    else:
        await conn.execute(text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_BATCH_TABLE} (code text)"))
    await conn.execute(text(f"DELETE FROM {_BATCH_TABLE}"))


async def _stage(conn: AsyncConnection, codes: list[str]) -> None:
    """Put ``codes`` in the batch table: COPY on PostgreSQL, one executemany on SQLite."""
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.copy_to_table(
            _BATCH_TABLE,
            source=io.BytesIO(("\n".join(codes) + "\n").encode("ascii")),
            columns=["code"],
        )
    else:
        await conn.execute(
            text(f"INSERT INTO {_BATCH_TABLE} (code) VALUES (:code)"),
            [{"code": c} for c in codes],
        )


# In code order, so that each index page is visited once per batch rather than once per
# code. ``WHERE true``: without it SQLite reads ``ON CONFLICT`` as a join constraint.
_MOVE = text(
    f"INSERT INTO join_codes (code, campaign_id, status, created_at, created_by) "
    f"SELECT code, :campaign_id, 'unused', :now, :by FROM {_BATCH_TABLE} WHERE true "
    "ORDER BY code ON CONFLICT (code) DO NOTHING"
).bindparams(bindparam("now", type_=UTCDateTime()))


async def generate(
    session: AsyncSession,
    campaign_id: str,
    count: int,
    prefix: str | None,
    actor: Caller | None,
    *,
    draw: Callable[[int, str], list[str]] = random_codes,
) -> Generated:
    """Write ``count`` new unused codes for the campaign (1 to ``MAX_COUNT``), ``prefix``
    first. 404 for an unknown campaign, 409 ``CampaignClosed`` for an ended or cancelled one;
    invalid input writes nothing. ``draw(n, prefix)`` draws candidate codes (codes already
    taken are drawn again)."""
    if not 1 <= count <= MAX_COUNT:
        raise InvalidField("count", "range", f"count: 1 to {MAX_COUNT}")
    prefix = check_prefix(prefix)
    campaign = await campaigns.get_campaign(session, campaign_id)
    if campaign.status in CLOSED:
        raise CampaignClosed(
            f"campaign {campaign_id} is {campaign.status}: it takes no new join codes",
            campaign_status=campaign.status,
        )
    conn = await session.connection()
    await _prepare_batch_table(conn)
    params = {"campaign_id": campaign_id, "now": utcnow(), "by": _actor_name(actor)}
    written = redrawn = 0
    while written < count:
        wanted = min(BATCH, count - written)
        await _stage(conn, draw(wanted, prefix))
        moved = int((await conn.execute(_MOVE, params)).rowcount or 0)
        await conn.execute(text(f"DELETE FROM {_BATCH_TABLE}"))
        written += moved
        redrawn += wanted - moved
    await auth_service.record_audit(
        session,
        actor,
        "join_codes.generate",
        f"campaign:{campaign_id}",
        {"count": count, "prefix": prefix, "redrawn": redrawn},
    )
    return Generated(campaign_id, count, prefix, redrawn)


# --------------------------------------------------------------------------- redeem


@dataclass(frozen=True)
class Joined:
    campaign_id: str
    merchant_id: str
    code: str
    joined_at: datetime
    joined_by: str
    replayed: bool = False


async def _code(session: AsyncSession, code: str) -> JoinCode:
    row = (
        await session.execute(
            select(JoinCode).where(JoinCode.code == code).execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if row is None:
        raise JoinCodeNotFound(f"join code {code} does not exist", code=code)
    return row


def _joined(row: CampaignMerchant, replayed: bool = False) -> Joined:
    return Joined(
        row.campaign_id, row.merchant_id, row.code, row.joined_at, row.joined_by, replayed
    )


async def membership(
    session: AsyncSession, campaign_id: str, merchant_id: str
) -> CampaignMerchant | None:
    return await session.get(CampaignMerchant, (campaign_id, merchant_id))


async def has_joined(session: AsyncSession, campaign_id: str, merchant_id: str) -> bool:
    """Whether ``merchant_id`` joined ``campaign_id`` (by redeeming one of its codes)."""
    found = await session.execute(
        select(CampaignMerchant.merchant_id).where(
            CampaignMerchant.campaign_id == campaign_id,
            CampaignMerchant.merchant_id == merchant_id,
        )
    )
    return found.first() is not None


_TAKE = (
    update(JoinCode)
    .where(JoinCode.code == bindparam("the_code"), JoinCode.status == "unused")
    .values(
        status="used",
        redeemed_by_merchant_id=bindparam("merchant"),
        redeemed_by_user_id=bindparam("user"),
        redeemed_at=bindparam("at"),
    )
    .returning(JoinCode.campaign_id)
)


async def redeem(session: AsyncSession, code: str, merchant_id: str, user_id: str) -> Joined:
    """Join the code's campaign as ``merchant_id`` (staff ``user_id``).

    404 ``JoinCodeNotFound``; 409 ``CodeVoid``, ``CodeUsed`` (a code is single-use),
    ``AlreadyJoined`` (the merchant joined with another code: this one stays unused),
    ``CampaignClosed``. Redeeming again the code this
    merchant already joined with answers that membership (``replayed``), so a retry is safe.
    """
    code = normalize_code(code)
    if not code or len(code) > CODE_MAX_LENGTH:
        raise JoinCodeNotFound(f"join code {code[:CODE_MAX_LENGTH]} does not exist", code=code)
    row = await _code(session, code)
    if row.status == "used" and row.redeemed_by_merchant_id == merchant_id:
        mine = await membership(session, row.campaign_id, merchant_id)
        if mine is not None and mine.code == code:
            return _joined(mine, replayed=True)
    _refuse_unless_unused(row)
    campaign = await campaigns.get_campaign(session, row.campaign_id)
    now = utcnow()
    if campaign.status in CLOSED or campaign.ends_at <= now:
        raise CampaignClosed(
            f"campaign {campaign.id} is {campaign.status}"
            + ("" if campaign.status in CLOSED else " and its window has closed")
            + ": it takes no more merchants",
            campaign_status=campaign.status,
        )
    async with session.begin_nested():
        taken = (
            await session.execute(
                _TAKE,
                {"the_code": code, "merchant": merchant_id, "user": user_id, "at": now},
                execution_options={"synchronize_session": False},
            )
        ).first()
        if taken is None:  # someone else took or voided it since we read it
            _refuse_unless_unused(await _code(session, code))
            raise CodeUsed(f"join code {code} was already used", code=code)
        joined = (
            await session.execute(
                db_insert(session, CampaignMerchant)
                .values(
                    campaign_id=row.campaign_id,
                    merchant_id=merchant_id,
                    code=code,
                    joined_at=now,
                    joined_by=user_id,
                )
                .on_conflict_do_nothing(index_elements=["campaign_id", "merchant_id"])
                .returning(CampaignMerchant.merchant_id)
            )
        ).first()
        if joined is None:
            raise AlreadyJoined(
                f"merchant {merchant_id} already joined campaign {row.campaign_id}; "
                f"code {code} stays unused",
                campaign_id=row.campaign_id,
                code=code,
            )
    return Joined(row.campaign_id, merchant_id, code, now, user_id)


def _refuse_unless_unused(row: JoinCode) -> None:
    if row.status == "void":
        raise CodeVoid(f"join code {row.code} was voided", code=row.code, reason="code-void")
    if row.status == "used":
        raise CodeUsed(f"join code {row.code} was already used", code=row.code, reason="code-used")


# --------------------------------------------------------------------------- void


async def void(
    session: AsyncSession,
    campaign_id: str,
    codes: Sequence[str] | None,
    actor: Caller | None,
) -> int:
    """Void the campaign's unused ``codes`` (normalized; others are left as they are), or
    every unused code of the campaign when ``codes`` is None. Answers how many were voided."""
    await campaigns.get_campaign(session, campaign_id)
    conditions = [JoinCode.campaign_id == campaign_id, JoinCode.status == "unused"]
    wanted: list[str] | None = None
    if codes is not None:
        wanted = sorted({normalize_code(c) for c in codes})
        conditions.append(one_of(session, JoinCode.code, wanted))
    result = await session.execute(
        update(JoinCode)
        .where(*conditions)
        .values(status="void", voided_at=utcnow(), voided_by=_actor_name(actor))
        .execution_options(synchronize_session=False)
    )
    voided = int(getattr(result, "rowcount", 0) or 0)
    await auth_service.record_audit(
        session,
        actor,
        "join_codes.void",
        f"campaign:{campaign_id}",
        {"voided": voided, "codes": None if wanted is None else len(wanted)},
    )
    return voided


# --------------------------------------------------------------------------- lists


CODE_ORDER = Keyset((JoinCode.code,), tuple[KeyId], descending=False)
MEMBER_ORDER = Keyset(
    (CampaignMerchant.joined_at, CampaignMerchant.merchant_id),
    tuple[KeyTime, KeyId],
    descending=False,
)


async def list_codes(
    session: AsyncSession,
    campaign_id: str,
    *,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[JoinCode]:
    """The campaign's codes in code order, with their state and who redeemed or voided them."""
    stmt = select(JoinCode).where(JoinCode.campaign_id == campaign_id)
    if status is not None:
        stmt = stmt.where(JoinCode.status == status)
    return await CODE_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def list_merchants(
    session: AsyncSession, campaign_id: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[CampaignMerchant]:
    """The merchants that joined the campaign, in the order they joined."""
    stmt = select(CampaignMerchant).where(CampaignMerchant.campaign_id == campaign_id)
    return await MEMBER_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


async def count_codes(session: AsyncSession, campaign_id: str) -> dict[str, int]:
    rows = await session.execute(
        select(JoinCode.status, func.count())
        .where(JoinCode.campaign_id == campaign_id)
        .group_by(JoinCode.status)
    )
    return {str(status): int(n) for status, n in rows}


# --------------------------------------------------------------------------- export


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # codes, states and ids hold no comma, quote or line break


def csv_header() -> str:
    return ",".join(EXPORT_COLUMNS) + "\n"


async def export_chunks(
    connect: Any, campaign_id: str, status: str | None = None, chunk: int = EXPORT_CHUNK
) -> AsyncIterator[str]:
    """The campaign's codes as CSV (header line first), ``chunk`` rows per piece, in code
    order. ``connect()`` is an async context manager giving a connection
    (``Database.reader``): one is taken per chunk, so no connection is held between pieces
    and never more than one chunk is in memory."""
    yield csv_header()
    columns = [getattr(JoinCode, c) for c in EXPORT_COLUMNS]
    after = ""
    while True:
        stmt = select(*columns).where(JoinCode.campaign_id == campaign_id, JoinCode.code > after)
        if status is not None:
            stmt = stmt.where(JoinCode.status == status)
        async with connect() as conn:
            rows = (await conn.execute(stmt.order_by(JoinCode.code).limit(chunk))).all()
        if not rows:
            return
        yield "".join(",".join(_csv_field(v) for v in row) + "\n" for row in rows)
        if len(rows) < chunk:
            return
        after = rows[-1][0]
