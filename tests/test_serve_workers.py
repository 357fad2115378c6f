"""`incentive serve --workers N` (issue 11): N processes on one port, each answering; a
purchase through them on PostgreSQL + Redis; SIGTERM ends every one of them. A deployment
whose state lives in one process's memory is refused more than one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from incentive.auth.keyring import KeyRing
from incentive.db import Database
from incentive.settings import Settings
from tests.factories import make_user
from tests.flash_sales.conftest import Sales, make_customers
from tests.servers import free_port


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _workers(parent: int) -> list[int]:
    """The supervisor's API processes (multiprocessing spawns them; a resource tracker, if
    any, is not one)."""
    found = []
    for child in _children(parent):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _answers(base_url: str) -> int:
    # A new connection each time: it is accepted by whichever process is accepting.
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        return (await client.get("/healthz")).status_code


@asynccontextmanager
async def serving(
    data_dir: Path, env_extra: dict[str, str], workers: int
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(data_dir),
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "WARNING",
        # Small pools: the test server shares PostgreSQL with the rest of the machine.
        "INCENTIVE_DB_POOL_SIZE": "2",
        "INCENTIVE_DB_MAX_OVERFLOW": "2",
        **env_extra,
    }
    log_path = data_dir / "serve.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "incentive.cli", "serve", "--port", str(port)),
            *("--workers", str(workers)),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleaned up whole below
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(f"serve exited:\n{log_path.read_text()}")
            if len(_workers(proc.pid)) == workers:
                try:
                    if await _answers(base_url) == 200:
                        break
                except httpx.TransportError:
                    pass
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"serve did not start:\n{log_path.read_text()}")
        yield base_url, proc
    finally:
        # Whatever a failed assertion left running, parent or orphaned workers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@pytest.mark.postgres_only
@pytest.mark.redis
async def test_serve_with_two_workers_runs_two_answering_processes_and_sigterm_ends_them(
    data_dir: Path, database_url: str, redis_url: str, redis: Any, db: Database
) -> None:
    env = {"INCENTIVE_DATABASE_URL": database_url, "INCENTIVE_REDIS_URL": redis_url}
    async with serving(data_dir, env, workers=2) as (base_url, proc):
        workers = _workers(proc.pid)
        assert len(workers) == 2
        # Each process answers alone while the other is stopped: nothing else can accept.
        for stopped, serving_one in (workers, workers[::-1]):
            os.kill(stopped, signal.SIGSTOP)
            try:
                assert await _answers(base_url) == 200, f"process {serving_one} did not answer"
            finally:
                os.kill(stopped, signal.SIGCONT)
        # Both processes sign and verify with the one key `serve` made before starting them.
        keys = KeyRing.load(data_dir / "keys")
        assert len(keys.by_kid) == 1
        tokens = SimpleNamespace(state=SimpleNamespace(keyring=keys))
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            operator = await make_user(db, tokens, username="op", role="operator")
            sales = Sales(client, operator, db, tokens)
            sale = await sales.create(10, limit=1, buckets=2)  # split by a worker's relay
            buyers = await make_customers(db, tokens, 4)
            responses = await asyncio.gather(*(sales.buy(b, sale, 1) for b in buyers))
            assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
            assert (await sales.state(sale))["remaining"] == 6
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        for _ in range(100):
            if not any(_alive(w) for w in workers):
                break
            await asyncio.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "a worker outlived its supervisor"


async def test_serve_refuses_several_workers_when_state_lives_in_one_process(
    data_dir: Path,
) -> None:
    """Embedded SQLite, or PostgreSQL without Redis (in-process stock: each process would
    sell the whole stock), must not run several API processes."""
    cases = [
        {"INCENTIVE_DATABASE_URL": "", "INCENTIVE_REDIS_URL": ""},
        {
            "INCENTIVE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
            "INCENTIVE_REDIS_URL": "",
        },
    ]
    for case in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INCENTIVE_")}
        env |= {"INCENTIVE_DATA_DIR": str(data_dir)}
        env |= {k: v for k, v in case.items() if v}
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "incentive.cli", "serve", "--workers", "2"),
            *("--port", str(free_port())),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:  # it started serving: end it (and fail below)
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        assert proc.returncode == 2, (out + err).decode()
        assert b"--workers 2 needs PostgreSQL and Redis" in err


def test_default_pools_fit_postgresql_default_max_connections_with_room_to_spare() -> None:
    """README's arithmetic: `serve --workers 2` + one `incentive worker` + one CLI command at
    their default pools fit PostgreSQL's default max_connections (100, 3 reserved), with a
    whole rolling restart of the two API processes still on top."""
    fields = Settings.model_fields  # the defaults, whatever this environment sets
    per_process = fields["db_pool_size"].default + fields["db_max_overflow"].default
    usable = 100 - 3
    assert (2 + 1 + 1) * per_process + 2 * per_process <= usable
