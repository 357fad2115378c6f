"""Database engine, session factory, declarative base and the unit of work.

Every entry point (HTTP request, worker job, CLI command) opens exactly one
``unit_of_work()``; services only ``flush()``. The unit of work commits on success and rolls
back on any error, so changes spanning several domains land together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    any_,
    bindparam,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from incentive.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Surrogate keys that may pass 2^31: BIGINT on PostgreSQL, INTEGER on SQLite (only an
# INTEGER PRIMARY KEY auto-increments there; SQLite integers are 64-bit anyway).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both engines (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_of(session: AsyncSession, column: Any, values: list[Any]) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL as ``column = ANY(:array)``: one bound array
    instead of thousands of rendered parameters (rendering them cost a fifth of a 5,000-item
    ledger batch's CPU)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


def insert(session: AsyncSession | str, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ``on_conflict_do_nothing``/``on_conflict_do_update`` in the dialect of
    ``session`` (or of a dialect name): the two engines spell the same ON CONFLICT clause."""
    dialect = session if isinstance(session, str) else session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def new_id() -> str:
    return uuid.uuid4().hex


_POOL = Settings.model_fields


class Database:
    """One engine + session factory per process (or per test).

    On PostgreSQL the process holds at most ``pool_size + max_overflow`` connections; a
    caller that finds none free waits ``pool_timeout`` seconds, then gets the pool's
    ``TimeoutError``, answered as a 503 (``errors.py``). The defaults are the settings'.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        pool_size: int = _POOL["db_pool_size"].default,
        max_overflow: int = _POOL["db_max_overflow"].default,
        pool_timeout: float = _POOL["db_pool_timeout"].default,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # Connections above pool_size are opened and closed per use: keep that rare.
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = max_overflow
            kwargs["pool_timeout"] = pool_timeout
            # No pre-ping: it costs three round trips per checkout. A dropped connection is
            # invalidated on first use and surfaces as a 503 (errors.py); readiness reports it.
            kwargs["pool_recycle"] = 1800
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine.sync_engine)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sqlite_reader = self.engine.execution_options(**{_READ_ONLY: True})
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        """The process's database, its pool sized by ``INCENTIVE_DB_POOL_*``."""
        return cls(
            settings.resolved_database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
        )

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """Commit on success, roll back on error. The only place that commits.

        Rollback and close finish even when the task is cancelled (a background loop stopped
        at shutdown): an abandoned connection would keep its transaction, and on SQLite the
        write lock, until the garbage collector found it.
        """
        async with self._tracked():
            session = self.sessionmaker()
            try:
                yield session
                await session.commit()
            except BaseException:
                await _finish(session.rollback())
                raise
            finally:
                await _finish(session.close())

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a single read on a hot path, outside any transaction.

        On PostgreSQL it runs in autocommit: one round trip per statement instead of three
        (BEGIN, the statement, COMMIT). On SQLite it is a deferred (plain ``BEGIN``) read
        transaction: under WAL it neither waits for nor blocks the writer, where the
        ``BEGIN IMMEDIATE`` of a unit of work would queue every read behind the write lock.
        Never write through it.
        """
        async with self._tracked():
            engine = self._sqlite_reader if self.is_sqlite else self._autocommit
            conn = await engine.connect()
            try:
                yield conn
            finally:
                await _finish(conn.close())

    @asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        if self._draining:
            # Shutting down: a background loop asking for more work stops here, between
            # transactions, instead of being cancelled inside one.
            raise asyncio.CancelledError("database draining for shutdown")
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    @asynccontextmanager
    async def draining(self, grace_seconds: float = 10.0) -> AsyncIterator[None]:
        """Refuse new units of work and wait (up to ``grace_seconds``) for running ones.

        Process shutdown cancels its background tasks inside this block: a task cancelled in
        the middle of a database call leaves SQLAlchemy a connection it can only discard,
        with its transaction (and SQLite's write lock) open until garbage collection.
        """
        self._draining = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_seconds)
            yield
        finally:
            self._draining = False

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _finish(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


# Execution option of ``Database.reader()`` connections on SQLite: begin deferred.
_READ_ONLY = "incentive_read_only"


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets readers run beside the single writer; BEGIN IMMEDIATE takes the write lock at
    # the start of a transaction so two writers queue instead of deadlocking on lock upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_database: Database | None = None


def set_database(db: Database | None) -> None:
    global _database
    _database = db


def get_database() -> Database:
    if _database is None:
        raise RuntimeError("database not initialised; call set_database() at start-up")
    return _database


T = TypeVar("T")


def per_dialect(build: Callable[[str], T]) -> Callable[[AsyncSession], T]:
    """Decorate ``build(dialect)`` — a statement whose shape depends on the database (an
    upsert, ``RETURNING``) — into ``statement(session)``, built once per dialect."""
    built: dict[str, T] = {}

    def for_session(session: AsyncSession) -> T:
        dialect = session.get_bind().dialect.name
        if dialect not in built:
            built[dialect] = build(dialect)
        return built[dialect]

    return for_session
