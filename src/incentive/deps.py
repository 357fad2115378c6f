"""Request-scoped dependencies shared by every router: the unit of work and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.db import Database


def database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # scope="function" (below) runs the commit right after the endpoint returns and before
    # the response is sent, so a 2xx is only ever sent for committed work.
    async with database(request).unit_of_work() as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session, scope="function")]
