"""One pagination style for every list: ``limit``, an opaque ``cursor``, ``{items, next_cursor}``.

Keyset pagination: a list is ordered by a few columns that together are unique (a timestamp
and an id, or an id alone), and a page continues strictly after the last row of the previous
one, so a row inserted or deleted meanwhile never makes another row appear twice or vanish.
The cursor is that last row's key, JSON in URL-safe base64: clients pass ``next_cursor`` back
untouched and must not build one; a cursor that does not decode to the list's key types is a
422 naming ``cursor``.

A route takes ``limit: Limit = DEFAULT_LIMIT`` and ``cursor: Cursor = None`` and answers a
``Page[...]`` subclass; its service describes its order once as a ``Keyset`` and calls
``keyset.fetch(...)`` (SQL) or ``keyset.slice_sorted(...)`` (a sorted list in memory), which
return a ``Slice`` of rows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Self, TypeVar

from fastapi import Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, StringConstraints, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from incentive.errors import InvalidField

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 400

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="`next_cursor` of the previous page; omit for the first page",
    ),
]

# Types a cursor's key parts may have, each bounded so that a forged cursor can never reach
# the database as something it cannot store (an int beyond BIGINT, a NUL in text).
KeyId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,200}$")]
KeyInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 has no UTC instant
        raise ValueError("timestamp out of range") from None


KeyTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]

T = TypeVar("T")
Row = TypeVar("Row")


@dataclass(frozen=True)
class Slice(Generic[Row]):
    """One page of a list as a service returns it (rows, not response shapes)."""

    items: list[Row]
    next_cursor: str | None


class Page(BaseModel, Generic[T]):
    """One page of a list as the API answers it; ``next_cursor`` is null on the last page."""

    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")

    @classmethod
    def of(cls, page: Slice[Any], shape: Callable[[Any], T]) -> Self:
        """The answer for a service's ``page``, each row given its response ``shape``."""
        return cls(items=[shape(row) for row in page.items], next_cursor=page.next_cursor)


def encode_cursor(key: Sequence[Any]) -> str:
    parts = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True)
class Keyset:
    """The order of one list: ``columns`` (unique together), all descending or all ascending,
    and ``types``, the tuple type a cursor decodes to (e.g. ``tuple[KeyTime, KeyId]``)."""

    columns: tuple[Any, ...]
    types: Any
    descending: bool = True

    def decode(self, cursor: str) -> tuple[Any, ...]:
        """The key a cursor carries; ``InvalidField('cursor')`` if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            key = TypeAdapter(self.types).validate_python(json.loads(raw))
        except (ValueError, binascii.Error, PydanticValidationError):
            raise InvalidField(
                "cursor", "format", "cursor: pass the next_cursor of the previous page"
            ) from None
        return tuple(key)

    def after(self, cursor: str) -> ColumnElement[bool]:
        """Rows strictly after the cursor's row in this order."""
        key = self.decode(cursor)
        terms = []
        for i, column in enumerate(self.columns):
            beyond = column < key[i] if self.descending else column > key[i]
            terms.append(
                and_(*(c == k for c, k in zip(self.columns[:i], key, strict=False)), beyond)
            )
        return or_(*terms)

    def order(self) -> list[Any]:
        return [c.desc() if self.descending else c.asc() for c in self.columns]

    def key_of(self, row: Any) -> tuple[Any, ...]:
        """A mapped row's key: its attributes named like the columns."""
        return tuple(getattr(row, c.key) for c in self.columns)

    def cut(
        self, rows: Sequence[Row], limit: int, key: Callable[[Row], tuple[Any, ...]] | None = None
    ) -> Slice[Row]:
        """The first ``limit`` of ``limit + 1`` fetched rows, and the cursor if there are more."""
        items = list(rows[:limit])
        more = len(rows) > limit
        return Slice(items, encode_cursor((key or self.key_of)(items[-1])) if more else None)

    async def fetch(
        self,
        session: AsyncSession,
        stmt: Select[Any],
        *,
        cursor: str | None,
        limit: int,
    ) -> Slice[Any]:
        """Run ``stmt`` (one entity per row) for the page after ``cursor``."""
        check_limit(limit)
        if cursor:
            stmt = stmt.where(self.after(cursor))
        rows = list(
            (await session.execute(stmt.order_by(*self.order()).limit(limit + 1))).scalars()
        )
        return self.cut(rows, limit)

    def slice_sorted(
        self,
        items: Sequence[Row],
        *,
        cursor: str | None,
        limit: int,
        key: Callable[[Row], tuple[Any, ...]],
    ) -> Slice[Row]:
        """The page after ``cursor`` of a list already in memory, sorted in this order."""
        check_limit(limit)
        rows = list(items)
        if cursor:
            last = self.decode(cursor)
            rows = [r for r in rows if (key(r) < last if self.descending else key(r) > last)]
        return self.cut(rows[: limit + 1], limit, key)


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidField("limit", "range", f"limit: 1 to {MAX_LIMIT}")
