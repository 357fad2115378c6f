"""The SQL target: rows upserted into one table of PostgreSQL or MariaDB/MySQL.

The table is reflected once, and again after a refused write (the table may have been
altered to take the rows). Its ``key_column`` must be its primary key or a unique column: a
write is one ``INSERT … ON CONFLICT (key) DO UPDATE`` (PostgreSQL) or ``INSERT … ON DUPLICATE
KEY UPDATE`` (MariaDB/MySQL) executed for all its rows (executemany), in one transaction.
On MariaDB/MySQL any other unique key of the table also counts as a duplicate: give the
target table no unique key but the record's.

The columns written are the key (and the version and hash columns when configured) and the
mapped fields present in the rows; rows with different fields go in one statement per set
of fields, still in the one transaction, so a field a row lacks is left as it is. Each value
is converted to its column's type where that is a plain conversion (``columns.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import MetaData, Table, UniqueConstraint
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchTableError,
    ProgrammingError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from incentive.data_models.records import TargetRefused, TargetRow
from incentive.data_models.targets import SqlTarget, TargetUnavailable
from incentive.data_models.targets.columns import converter

# PostgreSQL SQLSTATE classes the data or the schema cause (data exception, integrity
# constraint violation, syntax error or access rule violation); MariaDB/MySQL error numbers
# of the same kind that its driver reports as operational: unknown column, a CHECK failed.
_REFUSED_SQLSTATE = ("22", "23", "42")
_REFUSED_MYSQL = {1054, 3819, 4025}


def _refused(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError | DataError | ProgrammingError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _REFUSED_SQLSTATE
    args: tuple[Any, ...] = getattr(exc.orig, "args", ())
    return bool(args) and args[0] in _REFUSED_MYSQL


def _is_unique(table: Table, column: str) -> bool:
    def only(columns: Any) -> bool:
        return [c.name for c in columns] == [column]

    if only(table.primary_key.columns):
        return True
    if any(index.unique and only(index.columns) for index in table.indexes):
        return True
    return any(isinstance(c, UniqueConstraint) and only(c.columns) for c in table.constraints)


def _key(row: TargetRow) -> str:
    return row.key


def _version(row: TargetRow) -> int:
    return row.version


def _hash(row: TargetRow) -> str:
    return row.hash


class _Plan:
    """What the reflected table makes of rows: column names and each column's converter."""

    def __init__(self, table: Table, config: SqlTarget) -> None:
        self.table = table
        self.names = {c.name: c.name for c in table.columns}
        for c in table.columns:  # unquoted names match whatever their case
            self.names.setdefault(c.name.lower(), c.name)
        self.converters: dict[str, Callable[[Any], Any]] = {
            c.name: converter(c) for c in table.columns
        }
        self.key = self.column(config.key_column)
        if not _is_unique(table, self.key):
            raise TargetRefused(
                f"{table.name}.{self.key} is not the table's primary key or a unique column"
            )
        self.fixed: list[tuple[str, Callable[[TargetRow], Any]]] = [(self.key, _key)]
        if config.version_column:
            self.fixed.append((self.column(config.version_column), _version))
        if config.hash_column:
            self.fixed.append((self.column(config.hash_column), _hash))
        self.statements: dict[tuple[str, ...], Insert] = {}

    def column(self, name: str) -> str:
        found = self.names.get(name) or self.names.get(name.lower())
        if found is None:
            raise TargetRefused(f"table {self.table.name} has no column {name!r}")
        return found

    def params(self, row: TargetRow) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, value in self.fixed:
            out[column] = self._convert(row, column, value(row))
        for field, value in row.values.items():
            column = self.column(field)
            if column in out:
                raise TargetRefused(
                    f"mapped field {field!r} is the table's key, version or hash column"
                )
            out[column] = self._convert(row, column, value)
        return out

    def _convert(self, row: TargetRow, column: str, value: Any) -> Any:
        try:
            return self.converters[column](value)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise TargetRefused(
                f"record {row.key!r}: column {self.table.name}.{column} "
                f"({self.table.c[column].type}) cannot hold {exc}"
            ) from None

    def statement(self, columns: tuple[str, ...], dialect: str) -> Insert:
        found = self.statements.get(columns)
        if found is not None:
            return found
        update = [c for c in columns if c != self.key]
        if dialect == "postgresql":
            pg = postgresql.insert(self.table)
            if update:
                found = pg.on_conflict_do_update(
                    index_elements=[self.table.c[self.key]],
                    set_={c: pg.excluded[c] for c in update},
                )
            else:
                found = pg.on_conflict_do_nothing(index_elements=[self.table.c[self.key]])
        else:
            my = mysql.insert(self.table)
            found = my.on_duplicate_key_update({c: my.inserted[c] for c in update or [self.key]})
        self.statements[columns] = found
        return found


class SqlWriter:
    """Upserts ``TargetRow`` s into ``config.table`` (see the module's docstring)."""

    def __init__(self, config: SqlTarget) -> None:
        self.config = config
        self._engine: AsyncEngine | None = None
        self._plan: _Plan | None = None

    def _connect(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_async_engine(
                self.config.url,
                pool_size=2,
                max_overflow=2,
                pool_pre_ping=True,
                pool_recycle=1800,  # under MariaDB's wait_timeout
            )
        return self._engine

    async def _reflect(self, engine: AsyncEngine) -> _Plan:
        if self._plan is None:
            name = self.config.table
            try:
                async with engine.connect() as conn:
                    table = await conn.run_sync(
                        lambda sync: Table(name, MetaData(), autoload_with=sync)
                    )
            except NoSuchTableError:
                raise TargetRefused(f"table {name} does not exist") from None
            self._plan = _Plan(table, self.config)
        return self._plan

    async def write(self, rows: Sequence[TargetRow]) -> None:
        if not rows:
            return
        engine = self._connect()
        try:
            plan = await self._reflect(engine)
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                params = plan.params(row)
                groups.setdefault(tuple(sorted(params)), []).append(params)
            async with engine.begin() as conn:
                for columns, batch in groups.items():
                    await conn.execute(plan.statement(columns, engine.dialect.name), batch)
        except TargetRefused:
            self._plan = None  # the table may be altered to take them: reflect it again
            raise
        except DBAPIError as exc:
            reason = f"{self.config.table}: {type(exc.orig).__name__}: {exc.orig}"[:500]
            if _refused(exc):
                self._plan = None
                raise TargetRefused(reason) from exc
            raise TargetUnavailable(reason) from exc
        except (OSError, TimeoutError) as exc:
            raise TargetUnavailable(f"{self.config.redacted()}: {exc}"[:500]) from exc

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
