"""Plumbing for `incentive` sub-commands: run one unit of work against the configured database
and turn refusals into a one-line error and an exit code (2: bad input, 1: refused or
unavailable), never a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import typer
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import migrations
from incentive.db import Database
from incentive.errors import BadRequest, IncentiveError
from incentive.settings import get_settings

T = TypeVar("T")


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def echo_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, default=str))


@asynccontextmanager
async def command_database() -> AsyncIterator[Database]:
    """The configured database for one command; the embedded one is created if missing."""
    settings = get_settings()
    db = Database.for_settings(settings)
    try:
        if db.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            await migrations.upgrade(db.engine)
        yield db
    finally:
        await db.dispose()


async def in_unit_of_work(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work(session)`` in one unit of work: a command is an entry point, so it commits."""
    async with command_database() as db, db.unit_of_work() as session:
        return await work(session)


def run_work(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    try:
        return asyncio.run(in_unit_of_work(work))
    except BadRequest as exc:
        fail(exc.detail, 2)
    except IncentiveError as exc:
        fail(exc.detail, 1)
    except IntegrityError:
        fail("the change conflicts with existing data (created concurrently?)", 1)
    except (DBAPIError, OSError) as exc:
        fail(f"database unavailable: {type(exc).__name__}: {exc}".splitlines()[0], 1)
