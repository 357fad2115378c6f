"""Data sources: how a domain lends its records to data models (``data_models``) without
anyone reading its tables.

A domain that other systems may ask data of declares one ``DataSource`` in its
``source.py`` (the ``source`` flag of ``domains.py``) and registers it::

    register_source(CampaignSource())

A source names its fields and their **module types** (``string``, ``integer``, ``fen``,
``datetime``, ``boolean``, ``json``), pages its records in a stable order (optionally of one
campaign), reads records by key, and says which outbox topics announce a change of which
records (``keys_of``). Rows are plain values: JSON scalars, ``datetime`` for ``datetime``
fields, dicts or lists for ``json``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BeforeValidator, TypeAdapter, ValidationError
from sqlalchemy import Select, null, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import one_of
from incentive.kit.pagination import KeyId, KeyInt, Keyset, KeyTime

ModuleType = Literal["string", "integer", "fen", "datetime", "boolean", "json"]
MODULE_TYPES: tuple[str, ...] = ModuleType.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SourceRow:
    """One record of a source: its key, its campaign (if any), when it last changed, and its
    fields' values by name."""

    key: str
    campaign_id: str | None
    changed_at: datetime
    values: Mapping[str, Any]


@dataclass(frozen=True)
class SourcePage:
    rows: list[SourceRow]
    #: pass back as ``after`` for the next page; None when this was the last
    next_after: str | None


class DataSource(Protocol):
    #: the module's name in data models (``campaign``, ``referral``, ``coupon``, …)
    name: ClassVar[str]
    #: field name -> module type
    fields: ClassVar[Mapping[str, ModuleType]]
    #: outbox topics whose events may name changed records of this source
    topics: ClassVar[frozenset[str]] = frozenset()

    async def page(
        self,
        session: AsyncSession,
        *,
        campaign_id: str | None = None,
        since: datetime | None = None,
        after: str | None = None,
        limit: int = 500,
    ) -> SourcePage:
        """Up to ``limit`` records (of ``campaign_id`` when given, changed at or after
        ``since`` when given) after the opaque position ``after``, in a stable order."""
        ...

    async def by_keys(self, session: AsyncSession, keys: Sequence[str]) -> list[SourceRow]:
        """The records with these keys (missing ones are left out)."""
        ...

    def keys_of(self, topic: str, payload: Mapping[str, Any]) -> list[str]:
        """The keys of this source's records an outbox event announces as changed."""
        return []


_sources: dict[str, DataSource] = {}


def register_source(source: DataSource) -> DataSource:
    for name, module_type in source.fields.items():
        if module_type not in MODULE_TYPES:
            raise ValueError(f"source {source.name}: field {name} has type {module_type!r}")
    _sources[source.name] = source
    return source


def get_source(name: str) -> DataSource:
    try:
        return _sources[name]
    except KeyError:
        raise KeyError(f"no data source {name!r}") from None


def source_names() -> list[str]:
    return sorted(_sources)


# --------------------------------------------------------------------------- SQL sources

#: the most records one page may ask for
MAX_PAGE = 5_000
#: joins the parts of a key of several columns (``<campaign id>:<activity id>``)
KEY_SEPARATOR = ":"
_BY_KEYS_CHUNK = 500


def _digits(part: str) -> int:
    if not re.fullmatch(r"-?[0-9]{1,19}", part):
        raise ValueError("not an integer")
    return int(part)


_KEY_PART: TypeAdapter[str] = TypeAdapter(KeyId)
_INT_PART: TypeAdapter[int] = TypeAdapter(Annotated[KeyInt, BeforeValidator(_digits)])


@dataclass(frozen=True)
class _Sql:
    changed: Any
    campaign: Any
    key: tuple[Any, ...]
    keyset: Keyset


class TableSource(ABC):
    """A ``DataSource`` over its domain's tables, declared rather than written.

    A subclass names ``key`` (the columns of a record's key, joined by ``:``), ``campaign``
    (the campaign column; None: records of no campaign, which a campaign's page never holds),
    ``changed`` (when a record last changed), ``columns()`` (field -> column expression),
    and ``topic_keys`` (outbox topic -> the payload field holding a record's key; its keys
    are ``topics``). ``joined`` adds joins to the select, ``shape`` turns a row's values into
    the fields' (drop, mask or derive values there).

    Pages run in (``changed``, key) order, ascending, after an opaque cursor: a record that
    changes while a sync pages moves ahead of the cursor and is met again, never skipped.
    """

    name: ClassVar[str]
    fields: ClassVar[Mapping[str, ModuleType]]
    topic_keys: ClassVar[Mapping[str, str]] = {}
    topics: ClassVar[frozenset[str]] = frozenset()
    key: ClassVar[tuple[Any, ...]]
    campaign: ClassVar[Any]
    changed: ClassVar[Any]
    _sql: ClassVar[_Sql]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.topics = frozenset(cls.topic_keys)
        # Read through the class: a mapped column is a descriptor on an instance.
        types = (KeyTime, *(KeyInt if c.type.python_type is int else KeyId for c in cls.key))
        cls._sql = _Sql(
            cls.changed,
            cls.campaign,
            cls.key,
            Keyset((cls.changed, *cls.key), tuple.__class_getitem__(types), descending=False),
        )

    @abstractmethod
    def columns(self) -> Mapping[str, Any]:
        """The source's fields, by name, as columns (or expressions) of its tables."""

    def joined(self, stmt: Select[Any]) -> Select[Any]:
        return stmt

    def shape(self, values: dict[str, Any]) -> dict[str, Any]:
        return values

    def keys_of(self, topic: str, payload: Mapping[str, Any]) -> list[str]:
        field = self.topic_keys.get(topic)
        value = payload.get(field) if field else None
        return [] if value is None else [str(value)]

    def _select(self) -> Select[Any]:
        campaign = self._sql.campaign if self._sql.campaign is not None else null()
        stmt = select(
            self._sql.changed.label("_changed"),
            campaign.label("_campaign"),
            *(c.label(f"_k{i}") for i, c in enumerate(self._sql.key)),
            *(expr.label(name) for name, expr in self.columns().items()),
        )
        return self.joined(stmt).order_by(*self._sql.keyset.order())

    def _row(self, row: Mapping[str, Any]) -> SourceRow:
        key = KEY_SEPARATOR.join(str(row[f"_k{i}"]) for i in range(len(self._sql.key)))
        values = self.shape({name: row[name] for name in self.columns()})
        return SourceRow(key, row["_campaign"], row["_changed"], values)

    async def page(
        self,
        session: AsyncSession,
        *,
        campaign_id: str | None = None,
        since: datetime | None = None,
        after: str | None = None,
        limit: int = 500,
    ) -> SourcePage:
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit: 1 to {MAX_PAGE}")
        keyset, stmt = self._sql.keyset, self._select()
        if campaign_id is not None:
            if self._sql.campaign is None:
                return SourcePage([], None)
            stmt = stmt.where(self._sql.campaign == campaign_id)
        if since is not None:
            stmt = stmt.where(self._sql.changed >= since)
        if after:
            stmt = stmt.where(keyset.after(after))
        rows = list((await session.execute(stmt.limit(limit + 1))).mappings())
        cut = keyset.cut(
            rows, limit, lambda r: tuple(r[k] for k in _key_labels(len(self._sql.key)))
        )
        return SourcePage([self._row(r) for r in cut.items], cut.next_cursor)

    async def by_keys(self, session: AsyncSession, keys: Sequence[str]) -> list[SourceRow]:
        wanted = list(dict.fromkeys(p for k in keys if (p := self._parse(k)) is not None))
        found: list[SourceRow] = []
        for start in range(0, len(wanted), _BY_KEYS_CHUNK):
            chunk = wanted[start : start + _BY_KEYS_CHUNK]
            match = (
                one_of(session, self._sql.key[0], [p[0] for p in chunk])
                if len(self._sql.key) == 1
                else tuple_(*self._sql.key).in_(chunk)
            )
            rows = (await session.execute(self._select().where(match))).mappings()
            found.extend(self._row(r) for r in rows)
        return found

    def _parse(self, key: str) -> tuple[Any, ...] | None:
        """A key's column values; None for what no record of ours can have as its key."""
        parts = key.split(KEY_SEPARATOR, len(self._sql.key) - 1)
        if len(parts) != len(self._sql.key):
            return None
        try:
            return tuple(_KEY_PART.validate_python(p) for p in parts) and tuple(
                _INT_PART.validate_python(p) if c.type.python_type is int else p
                for p, c in zip(parts, self._sql.key, strict=True)
            )
        except ValidationError:
            return None


def _key_labels(n: int) -> tuple[str, ...]:
    return ("_changed", *(f"_k{i}" for i in range(n)))
