"""Sensitive-word lists: created, filled (a whole file at once: 100,000+ words), changed word
by word, given a severity — each change a new version of its list, audited, and a new
global revision that every process's matcher follows (``screen.py``).

Contract:

- A change bumps its list's ``version`` first (one ``UPDATE … RETURNING``: concurrent changes
  of one list queue on its row), writes the words, records a ``WordListChange`` and an audit
  entry, and bumps ``review_revision`` last (held for the shortest time). Nothing here
  commits.
- Words are stored as given (trimmed); matching normalises them (``matcher.normalise``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Result, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from incentive.auth.audit import record_audit
from incentive.db import insert, one_of, utcnow
from incentive.errors import InvalidField
from incentive.kit.idempotency import Caller
from incentive.kit.pagination import KeyInt, Keyset, Slice
from incentive.kit.text import refused_character
from incentive.review.errors import WordListNotFound
from incentive.review.matcher import Word
from incentive.review.models import (
    REVISION_ROW_ID,
    ReviewRevision,
    SensitiveWord,
    WordList,
    WordListChange,
)

MAX_WORD = 100
CHUNK = 5_000
CHANGES = Keyset((WordListChange.id,), tuple[KeyInt], descending=True)
LISTS = Keyset((WordList.name,), tuple[str], descending=False)
WORDS = Keyset((SensitiveWord.word,), tuple[str], descending=False)


def clean_words(words: Iterable[str], field: str = "words") -> list[str]:
    """The distinct non-blank words, trimmed, in first-seen order; 422 naming the word's
    position for one too long or holding a control character."""
    seen: dict[str, None] = {}
    for i, raw in enumerate(words):
        word = raw.strip()
        if not word:
            continue
        if len(word) > MAX_WORD:
            raise InvalidField(
                f"{field}.{i}", "max_length", f"{field}.{i}: at most {MAX_WORD} characters"
            )
        bad = refused_character(word)
        if bad is not None:
            raise InvalidField(
                f"{field}.{i}", "control_character", f"{field}.{i}: {bad} is not allowed"
            )
        seen.setdefault(word, None)
    return list(seen)


async def create_list(
    session: AsyncSession, actor: Caller | None, name: str, severity: str
) -> WordList:
    row = WordList(
        name=name,
        severity=severity,
        version=1,
        word_count=0,
        created_by=actor.id if actor else "cli",
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        raise InvalidField("name", "unique", f"name: a word list named {name} exists") from None
    await _record(session, actor, row, "create", 0, {"severity": severity})
    return row


async def get_list(session: AsyncSession, name: str) -> WordList:
    found = (
        await session.execute(
            select(WordList).where(WordList.name == name).execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if found is None:
        raise WordListNotFound(f"no word list named {name}", name=name)
    return found


async def _bump(session: AsyncSession, name: str, **values: Any) -> WordList:
    """Lock the list's row by moving it to its next version."""
    found = (
        await session.execute(
            update(WordList)
            .where(WordList.name == name)
            .values(version=WordList.version + 1, updated_at=utcnow(), **values)
            .returning(WordList.id)
        )
    ).first()
    if found is None:
        raise WordListNotFound(f"no word list named {name}", name=name)
    return await get_list(session, name)


async def _count(session: AsyncSession, list_id: int) -> int:
    found = await session.scalar(
        select(func.count()).select_from(SensitiveWord).where(SensitiveWord.list_id == list_id)
    )
    return int(found or 0)


async def _record(
    session: AsyncSession,
    actor: Caller | None,
    row: WordList,
    action: str,
    count: int,
    detail: dict[str, Any] | None = None,
) -> None:
    await session.execute(
        update(WordList)
        .where(WordList.id == row.id)
        .values(word_count=await _count(session, row.id))
    )
    session.add(
        WordListChange(
            list_id=row.id,
            version=row.version,
            action=action,
            words=count,
            detail=detail or {},
            actor=actor.id if actor else "cli",
            at=utcnow(),
        )
    )
    await record_audit(
        session,
        actor,
        f"review.words.{action}",
        row.name,
        {"version": row.version, "words": count, **(detail or {})},
    )
    bump = insert(session, ReviewRevision.__table__).values(id=REVISION_ROW_ID, revision=1)
    await session.execute(
        bump.on_conflict_do_update(
            index_elements=["id"], set_={"revision": ReviewRevision.__table__.c.revision + 1}
        )
    )
    await session.flush()
    await session.refresh(row)


async def add_words(
    session: AsyncSession,
    actor: Caller | None,
    name: str,
    words: Sequence[str],
    *,
    replace: bool = False,
) -> tuple[WordList, int]:
    """Add ``words`` (``replace``: the list becomes exactly ``words``, an import); the list
    and how many words were new."""
    row = await _bump(session, name)
    if replace:
        await session.execute(delete(SensitiveWord).where(SensitiveWord.list_id == row.id))
    before = await _count(session, row.id)
    for start in range(0, len(words), CHUNK):
        chunk = [
            {"list_id": row.id, "word": w, "added_in": row.version}
            for w in words[start : start + CHUNK]
        ]
        await session.execute(
            insert(session, SensitiveWord.__table__).on_conflict_do_nothing(), chunk
        )
    await _record(session, actor, row, "import" if replace else "add", len(words))
    # (an executemany's rowcount is not the rows inserted on every driver)
    return row, row.word_count - before


async def remove_words(
    session: AsyncSession, actor: Caller | None, name: str, words: Sequence[str]
) -> tuple[WordList, int]:
    row = await _bump(session, name)
    before = await _count(session, row.id)
    for start in range(0, len(words), CHUNK):
        await session.execute(
            delete(SensitiveWord).where(
                SensitiveWord.list_id == row.id,
                one_of(session, SensitiveWord.word, list(words[start : start + CHUNK])),
            )
        )
    removed = before - await _count(session, row.id)
    await _record(session, actor, row, "remove", removed)
    return row, removed


async def set_severity(
    session: AsyncSession, actor: Caller | None, name: str, severity: str
) -> WordList:
    before = (await get_list(session, name)).severity
    row = await _bump(session, name, severity=severity)
    await _record(session, actor, row, "severity", 0, {"from": before, "to": severity})
    return row


async def lists(
    session: AsyncSession, *, cursor: str | None = None, limit: int = 50
) -> Slice[WordList]:
    return await LISTS.fetch(session, select(WordList), cursor=cursor, limit=limit)


async def changes(
    session: AsyncSession, name: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[WordListChange]:
    row = await get_list(session, name)
    stmt = select(WordListChange).where(WordListChange.list_id == row.id)
    return await CHANGES.fetch(session, stmt, cursor=cursor, limit=limit)


async def words_of(
    session: AsyncSession, name: str, *, cursor: str | None = None, limit: int = 50
) -> Slice[SensitiveWord]:
    row = await get_list(session, name)
    stmt = select(SensitiveWord).where(SensitiveWord.list_id == row.id)
    return await WORDS.fetch(session, stmt, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class Loaded:
    """Every word of every list at one revision."""

    revision: int
    words: list[Word]
    versions: dict[str, int]


LOAD = select(SensitiveWord.word, WordList.name, WordList.version, WordList.severity).join(
    WordList, WordList.id == SensitiveWord.list_id
)


async def current_revision(conn: AsyncConnection) -> int:
    found = await conn.scalar(
        select(ReviewRevision.revision).where(ReviewRevision.id == REVISION_ROW_ID)
    )
    return int(found or 0)


async def load(conn: AsyncConnection) -> Loaded:
    """The revision first, then the words: the words are at least that new, so a change
    committed in between is seen now or at the next poll, never lost."""
    revision = await current_revision(conn)
    versions = {
        name: int(version)
        for name, version in (await conn.execute(select(WordList.name, WordList.version))).all()
    }
    result = await conn.execute(LOAD)
    # The rows are buffered by now: turning 100,000 of them into words takes ~0.3 s of CPU,
    # done in a thread so the event loop serves requests meanwhile (bench/review.py, swap)
    return Loaded(revision, await asyncio.to_thread(_words, result), versions)


def _words(result: Result[str, str, int, str]) -> list[Word]:
    # row by row: ``result.all()`` would build every row in one C call, holding the GIL (and
    # so the event loop) for 0.2-0.5 s at 100,000 rows
    return [
        Word(text=word, list_name=name, list_version=int(version), severity=severity)
        for word, name, version, severity in result
    ]
