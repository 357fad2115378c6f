"""Request-scoped dependencies shared by every router: the unit of work and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import Database
from incentive.errors import Conflict, ServiceUnavailable


def database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # scope="function" (below) runs the commit right after the endpoint returns and before
    # the response is sent, so a 2xx is only ever sent for committed work. Driver errors that
    # a caller can provoke (a concurrent duplicate, a busy database) are converted here, at
    # the boundary, instead of surfacing as 500s.
    try:
        async with database(request).unit_of_work() as session:
            yield session
    except IntegrityError as exc:
        raise Conflict("the change conflicts with existing data (a concurrent duplicate?)") from exc
    except OperationalError as exc:
        raise ServiceUnavailable("database busy, retry shortly", retry_after=1) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise ServiceUnavailable("database connection lost, retry", retry_after=1) from exc
        raise


Session = Annotated[AsyncSession, Depends(_session, scope="function")]
