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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

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
