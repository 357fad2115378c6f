"""A change is applied by every running process within 2 seconds, without restart.

Two app instances with their own engines and caches stand in for two processes; a real
`incentive serve` subprocess changed through the real `incentive config set` CLI proves it
across process boundaries.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from incentive.app import create_app
from incentive.config import live_config
from incentive.config.live import LiveConfig
from incentive.db import Database
from incentive.settings import Settings
from tests.factories import make_user
from tests.servers import running_server
from tests.tcp_gate import TcpGate

APPLY_WITHIN = 2.0


@asynccontextmanager
async def _process(settings: Settings, url: str) -> AsyncIterator[Any]:
    """An app with its own engine, cache and background tasks: one 'process'."""
    db = Database(url)
    app = create_app(settings, db)
    try:
        async with app.router.lifespan_context(app):
            yield app
    finally:
        await db.dispose()


async def _until(predicate: Any, within: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"not applied within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _change_and_observe(a: Any, b: Any, db: Database, value: int) -> float:
    op = await make_user(db, a, username=f"op{value}", role="operator")
    transport = httpx.ASGITransport(app=a)
    async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
        r = await client.put(
            "/api/v1/config/flash_sale.buckets", json={"value": value}, headers=op.headers
        )
        assert r.status_code == 200, r.text
    return await _until(lambda: b.state.config.get("flash_sale.buckets") == value, APPLY_WITHIN)


async def test_two_processes_by_polling(
    settings: Settings, db: Database, database_url: str
) -> None:
    async with _process(settings, database_url) as a, _process(settings, database_url) as b:
        assert b.state.config.get("flash_sale.buckets") == 16
        await _change_and_observe(a, b, db, 128)
        # And back the other way, through the other process.
        await _change_and_observe(b, a, db, 256)


@pytest.mark.redis
async def test_two_processes_by_redis_push(
    settings: Settings, db: Database, database_url: str, redis: Any, redis_url: str
) -> None:
    # Polling every 30 s cannot explain a sub-second apply: this is the pub/sub push.
    pushed = settings.model_copy(update={"redis_url": redis_url, "config_refresh_seconds": 30.0})
    async with _process(pushed, database_url) as a, _process(pushed, database_url) as b:
        elapsed = await _change_and_observe(a, b, db, 512)
        assert elapsed < 1.0


class _Outage:
    """A real outage of the refresher's database. PostgreSQL is reached through a loopback
    gate that drops every connection and refuses new ones; SQLite's data directory is moved
    away (as if unmounted) and the refresher's open connections are dropped with it."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.gate: TcpGate | None = None
        self.url = database_url
        if url.get_backend_name() == "postgresql":
            self.gate = TcpGate(url.host or "127.0.0.1", url.port or 5432)
            self.url = url.set(host="127.0.0.1", port=self.gate.port).render_as_string(
                hide_password=False
            )
        # SQLite: the directory of the database file (unused on PostgreSQL).
        self.data = Path(url.database or "x").resolve().parent
        self.away = self.data.with_name(self.data.name + "-unmounted")

    async def down(self, refresher: Database) -> None:
        if self.gate is not None:
            await self.gate.cut()
        else:
            self.data.rename(self.away)
            await refresher.engine.dispose()

    async def up(self) -> None:
        if self.gate is not None:
            await self.gate.open()
        elif self.away.exists():
            self.away.rename(self.data)


async def test_refresher_survives_a_real_database_outage(db: Database, database_url: str) -> None:
    """The refresher's database goes away for real and comes back: meanwhile the last good
    values are served (not the defaults) and the failures are counted; afterwards a change
    made during the outage is applied within the usual delay."""
    from prometheus_client import REGISTRY

    from incentive.config import service
    from incentive.config.live import run_refresher

    def failures() -> float:
        return REGISTRY.get_sample_value("incentive_config_refresh_failures_total") or 0.0

    outage = _Outage(database_url)
    await outage.up()
    refresher_db = Database(outage.url)
    config = LiveConfig(refresher_db)
    task = asyncio.create_task(run_refresher(config, 0.05))
    try:
        async with db.unit_of_work() as s:
            await service.set_value(s, "flash_sale.buckets", 32, actor="test")
        await _until(lambda: config.get("flash_sale.buckets") == 32, APPLY_WITHIN)
        before = failures()
        await outage.down(refresher_db)
        async with db.unit_of_work() as s:  # the test's own connection still reaches it
            await service.set_value(s, "flash_sale.buckets", 64, actor="test")
        await _until(lambda: failures() >= before + 3, APPLY_WITHIN)
        assert not task.done()
        assert config.get("flash_sale.buckets") == 32  # the last good value, not 16
        await outage.up()
        await _until(lambda: config.get("flash_sale.buckets") == 64, APPLY_WITHIN)
    finally:
        await outage.up()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await refresher_db.dispose()
        if outage.gate is not None:
            await outage.gate.cut()


async def test_module_accessor_follows_the_installed_cache(db: Database) -> None:
    from incentive.config import service

    async with db.unit_of_work() as s:
        await service.set_value(s, "points_file.workers", 12, actor="test")
    config = LiveConfig(db)
    await config.reload()
    previous = live_config.current
    live_config.install(config)
    try:
        assert live_config.get("points_file.workers") == 12
    finally:
        live_config.install(previous if previous is not config else None)


async def test_stored_value_the_code_no_longer_accepts_falls_back_to_default(
    db: Database,
) -> None:
    from sqlalchemy import insert

    from incentive.config.models import ConfigEntry
    from incentive.db import utcnow

    async with db.unit_of_work() as s:
        await s.execute(
            insert(ConfigEntry).values(
                key="flash_sale.buckets",
                value="lots",
                version=1,
                updated_at=utcnow(),
                updated_by="x",
            )
        )
    config = LiveConfig(db)
    await config.reload()
    assert config.get("flash_sale.buckets") == 16


async def _cli(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "config",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_real_server_applies_a_cli_change_within_2s(
    app: Any, db: Database, database_url: str, data_dir: Path, redis_url: str | None
) -> None:
    op = await make_user(db, app, username="op", role="operator")
    extra = {"INCENTIVE_CONFIG_REFRESH_SECONDS": "1"}
    if redis_url:
        extra["INCENTIVE_REDIS_URL"] = redis_url
    async with running_server(data_dir, database_url, extra) as server:
        env = {**server.env, **extra}
        async with httpx.AsyncClient(base_url=server.base_url, headers=op.headers) as client:
            url = "/api/v1/config/points_file.batch_size"
            assert (await client.get(url)).json()["applied"]["value"] == 5_000
            await _cli(env, "set", "points_file.batch_size", "2500")
            start = time.monotonic()
            while True:
                body = (await client.get(url)).json()
                if body["applied"]["value"] == 2500:
                    break
                assert time.monotonic() - start < APPLY_WITHIN, body
                await asyncio.sleep(0.05)
        out = await _cli(env, "get", "points_file.batch_size")
        assert '"value": 2500' in out
        listing = await _cli(env, "list")
        assert "flash_sale.buckets" in listing


async def _config_rows(db: Database) -> tuple[list[Any], int, Any]:
    """Every stored value with its version, the audit size and the change revision."""
    from sqlalchemy import func, select

    from incentive.config.models import ConfigAudit, ConfigEntry, ConfigRevision

    async with db.unit_of_work() as s:
        entries = (
            await s.execute(select(ConfigEntry.key, ConfigEntry.value, ConfigEntry.version))
        ).all()
        audit = (await s.execute(select(func.count()).select_from(ConfigAudit))).scalar_one()
        revision = (await s.execute(select(ConfigRevision.revision))).scalar_one_or_none()
    return sorted(tuple(e) for e in entries), int(audit), revision


async def test_cli_rejects_invalid_values_with_a_problem(
    db: Database, database_url: str, data_dir: Path
) -> None:
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_LOG_LEVEL": "WARNING",
    }
    env.pop("INCENTIVE_REDIS_URL", None)
    await _cli(env, "set", "flash_sale.buckets", "32")
    before = await _config_rows(db)
    assert before[0] == [("flash_sale.buckets", 32, 1)]
    refusals = (
        ("flash_sale.buckets", "0", "greater_than_equal"),
        ("no.such_key", "1", "config-key-unknown"),
    )
    for name, value, rule in refusals:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "incentive.cli",
            "config",
            "set",
            name,
            value,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 2, err.decode()
        assert rule in err.decode()
        assert await _config_rows(db) == before  # value, version, audit and revision
    config = LiveConfig(db)
    await config.reload()
    assert config.get("flash_sale.buckets") == 32
