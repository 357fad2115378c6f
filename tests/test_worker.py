"""`incentive worker`: a separate process relays the outbox that API processes write."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from sqlalchemy import select

from incentive import events
from incentive.db import Database
from incentive.events.models import OutboxEvent


async def _published(db: Database, event_id: str) -> bool:
    async with db.unit_of_work() as s:
        row = await s.scalar(select(OutboxEvent).where(OutboxEvent.event_id == event_id))
        return row is not None and row.published_at is not None


async def test_worker_process_relays_outbox_and_stops_on_sigterm(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    async with db.unit_of_work() as s:
        event_id = await events.publish(s, "test.worker", {"n": 1}, key="k")
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(tmp_path),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "WARNING",
    }
    env.pop("INCENTIVE_REDIS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "worker",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            if await _published(db, event_id):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("worker did not relay the event")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, out.decode()
