"""Data-model test worlds (the domains' own: campaigns, activities, points files) and helpers:
a webhook receiver on loopback that checks the Standard Webhooks
signature, keeps each POST and answers a script (statuses, or "slow")."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from incentive.kit import webhooks
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.settings import Settings
from tests.activities.conftest import sender as sender  # noqa: F401  (fixture)
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)
from tests.points_files.conftest import crypto as crypto  # noqa: F401  (fixture)
from tests.points_files.conftest import pgp as pgp  # noqa: F401  (fixture)
from tests.points_files.conftest import quiet_settings as quiet_settings  # noqa: F401  (fixture)
from tests.servers import free_port

SECRET = "whsec_" + "ZGF0YS1tb2RlbC10YXJnZXQtc2VjcmV0IQ=="


@dataclass
class Receiver:
    """Checks each POST's signature (401 when wrong), keeps it, answers the next scripted
    answer: a status, ``"slow"`` (kept, then a 200 after 2 s) or ``"slow-commit"`` (a 200
    after 2 s, kept only if the caller is still there); 200 when the script is done."""

    url: str = ""
    script: list[int | str] = field(default_factory=list)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    #: every signed POST that arrived, kept or not
    arrivals: int = 0

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        try:
            webhooks.verify(SECRET, request.headers, body)
        except webhooks.BadSignature as exc:
            return Response(str(exc), status_code=401)
        self.arrivals += 1
        answer = self.script.pop(0) if self.script else 200
        if answer == "slow-commit":  # a store that keeps a write only once it is answered
            await asyncio.sleep(2)
            if await request.is_disconnected():
                return Response("gone", status_code=499)
            answer = 200
        self.posts.append((dict(request.headers), body))
        if answer == "slow":
            await asyncio.sleep(2)
            answer = 200
        return Response("no" if answer != 200 else "", status_code=int(answer))


@asynccontextmanager
async def serving(endpoint: Any) -> AsyncIterator[str]:
    """A real HTTP server on loopback answering POST /hook with ``endpoint``; its URL."""
    port = free_port()
    app = Starlette(routes=[Route("/hook", endpoint, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no startup event
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serving(found.endpoint) as url:
        found.url = url
        yield found


@pytest.fixture
def worker_env(settings: Settings, database_url: str) -> dict[str, str]:
    """The environment of an ``incentive`` subprocess on the test's data dir and database."""
    return {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(settings.data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "ERROR",
    }


PG_URL = os.environ.get("INCENTIVE_TEST_DATABASE_URL")
MARIADB_URL = os.environ.get("INCENTIVE_TEST_MARIADB_URL")


def _own_name(url: str) -> str:
    return f"{make_url(url).database or 'incentive'}_target_t{os.getpid()}"


def _admin_url(url: str) -> str:
    return make_url(url)._replace(database=None).render_as_string(hide_password=False)


async def _mariadb(url: str, sql: str) -> None:
    engine = create_async_engine(_admin_url(url))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


def target_servers() -> list[str]:
    """The SQL target servers this run has: PostgreSQL on its run, MariaDB when its URL is set."""
    return [kind for kind, url in (("postgresql", PG_URL), ("mariadb", MARIADB_URL)) if url]


@contextmanager
def target_database(kind: str) -> Iterator[str]:
    """A database of its own on a target server (``postgresql`` or ``mariadb``), dropped at
    the end; skipped when this run has no such server, failed when it is unreachable."""
    if kind == "postgresql":
        if not PG_URL:
            pytest.skip("PostgreSQL run only (INCENTIVE_TEST_DATABASE_URL)")
        name = _own_name(PG_URL)
        yield asyncio.run(recreate_database(PG_URL, name))
        asyncio.run(drop_database(PG_URL, name))
        return
    if not MARIADB_URL:
        pytest.skip("set INCENTIVE_TEST_MARIADB_URL")
    name = _own_name(MARIADB_URL)
    try:
        asyncio.run(_mariadb(MARIADB_URL, f"CREATE OR REPLACE DATABASE {name}"))
    except Exception as exc:  # unreachable MariaDB fails the run, never skips it
        shown = make_url(MARIADB_URL).render_as_string(hide_password=True)
        pytest.fail(f"MariaDB unreachable at {shown}: {exc}")
    yield make_url(MARIADB_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_mariadb(MARIADB_URL, f"DROP DATABASE IF EXISTS {name}"))
