"""Crediting through an external loyalty system over HTTP: a real server on loopback that
injects latency and errors. Retries, CREDIT_FAILED, idempotency keys, and the adaptive
limiter backing off under latency and growing back when it drops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from incentive.config import service as config_service
from incentive.config.live import LiveConfig, live_config
from incentive.db import Database
from incentive.points_files import service
from incentive.points_files.answer_format import RecordStatus
from incentive.points_files.crypto import PointsCrypto
from incentive.points_files.limiter import LimiterSettings
from incentive.points_files.models import PointsBatch
from incentive.points_files.pipeline import PointsPipeline
from incentive.settings import Settings
from tests.points_files.kit import (
    Pgp,
    encrypt,
    feedback_of,
    local_transport,
    make_members,
    make_partner,
    plain_file,
    rec,
    run_pipeline,
)
from tests.servers import free_port


@dataclass
class Loyalty:
    """The partner's loyalty system: answers each item ``ok`` unless told otherwise."""

    url: str = ""
    latency_s: float = 0.0
    fail_next: int = 0  # answer 503 to this many calls
    refuse: set[str] = field(default_factory=set)  # record ids answered "rejected"
    keys: list[str] = field(default_factory=list)
    calls: list[tuple[float, int, int]] = field(default_factory=list)  # (time, items, inflight)
    inflight: int = 0
    floor_size: int = 0  # set ``at_floor`` on the first call with this many items
    at_floor: asyncio.Event = field(default_factory=asyncio.Event)

    async def credit(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.inflight += 1
        try:
            self.calls.append((time.monotonic(), len(body["items"]), self.inflight))
            if len(body["items"]) == self.floor_size:
                self.at_floor.set()
            await asyncio.sleep(self.latency_s)
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"error": "busy"}, status_code=503)
            self.keys.extend(i["key"] for i in body["items"])
            return JSONResponse(
                {
                    "results": [
                        {"key": i["key"], "status": "rejected", "detail": "account closed"}
                        if i["record_id"] in self.refuse
                        else {"key": i["key"], "status": "ok"}
                        for i in body["items"]
                    ]
                }
            )
        finally:
            self.inflight -= 1


@pytest.fixture
async def loyalty() -> AsyncIterator[Loyalty]:
    system = Loyalty()
    port = free_port()
    system.url = f"http://127.0.0.1:{port}/credit"
    app = Starlette(routes=[Route("/credit", system.credit, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no startup event
        await asyncio.sleep(0.01)
    yield system
    server.should_exit = True
    await task


async def _partner_on(
    db: Database,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    loyalty: Loyalty,
    members: list[str],
) -> Path:
    await make_partner(db, crypto, pgp)
    await make_members(db, members)
    root = await local_transport(db, tmp_path)
    async with db.unit_of_work() as s:
        await service.set_partner_limits(s, "ACME", crediting_url=loyalty.url)
    return root


async def test_http_target_retries_refusals_and_keys(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    loyalty: Loyalty,
) -> None:
    root = await _partner_on(db, crypto, pgp, tmp_path, loyalty, ["h1", "h2"])
    records = [rec(f"k{i}", ["h1", "h2"][i % 2], 10 + i) for i in range(30)]
    name = "POINTS_ACME_20250111_1.txt.pgp"
    encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 1, records)).rename(root / "in" / name)
    loyalty.fail_next = 2  # the first two calls fail: retried with backoff
    loyalty.refuse = {"k7"}
    assert await run_pipeline(db, quiet_settings, poll=True, retry_base_s=0.01) == 1
    results, totals = feedback_of(pgp, root / "out" / f"FEEDBACK_{name}")
    assert [r.record_id for r in results] == [r[0] for r in records]
    failed = [r for r in results if r.status is RecordStatus.FAILED]
    assert [(r.record_id, r.reason_code) for r in failed] == [("k7", "CREDIT_FAILED")]
    assert totals.ok_count == 29
    assert totals.points_credited == sum(10 + i for i in range(30) if i != 7)
    # Each record reached the loyalty system under partner:<code>:<record_id>, and only the
    # successful call's keys count (the failed calls were answered 503 before recording).
    assert sorted(set(loyalty.keys)) == sorted(f"partner:ACME:k{i}" for i in range(30))
    assert len(loyalty.keys) == 30


async def test_http_target_down_for_good_is_credit_failed(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    loyalty: Loyalty,
) -> None:
    root = await _partner_on(db, crypto, pgp, tmp_path, loyalty, ["d1"])
    name = "POINTS_ACME_20250111_2.txt.pgp"
    plain = plain_file(tmp_path / "p.txt", "ACME", 2, [rec("z1", "d1", 5), rec("z2", "d1", 6)])
    encrypt(pgp, plain).rename(root / "in" / name)
    loyalty.fail_next = 10**6
    await run_pipeline(db, quiet_settings, poll=True, retry_base_s=0.01, credit_attempts=3)
    results, totals = feedback_of(pgp, root / "out" / f"FEEDBACK_{name}")
    assert {(r.status, r.reason_code) for r in results} == {(RecordStatus.FAILED, "CREDIT_FAILED")}
    assert totals.points_credited == 0
    assert len(loyalty.calls) == 3  # every attempt reached the system


async def test_limiter_backs_off_under_latency_and_recovers(
    db: Database,
    quiet_settings: Settings,
    crypto: PointsCrypto,
    pgp: Pgp,
    tmp_path: Path,
    loyalty: Loyalty,
) -> None:
    members = [f"l{i}" for i in range(50)]
    root = await _partner_on(db, crypto, pgp, tmp_path, loyalty, members)
    async with db.unit_of_work() as s:
        await config_service.set_value(s, "points_file.batch_size", 400, actor="test")
        await config_service.set_value(s, "points_file.workers", 4, actor="test")
    config = LiveConfig(db)  # this process reads the live values the test just set
    await config.reload()
    live_config.install(config)
    n = 12_000
    name = "POINTS_ACME_20250111_3.txt.pgp"
    records = (rec(f"q{i}", members[i % 50], 1) for i in range(n))
    encrypt(pgp, plain_file(tmp_path / "p.txt", "ACME", 3, records)).rename(root / "in" / name)
    limits = LimiterSettings(
        target_latency_s=0.15,
        cooldown_s=0.05,
        batch_size_step=100,
        concurrency_step=1,
        decrease_factor=0.5,
    )
    pipeline = PointsPipeline(db, quiet_settings, limiter_settings=limits)
    loyalty.latency_s = 0.4  # slow from the start
    loyalty.floor_size = 100

    limiter = pipeline.limiter(loyalty.url)  # the one the pipeline uses (same live bounds)
    finished = asyncio.Event()
    after_recovery: list[int] = []  # the limiter's concurrency, sampled once latency dropped

    async def run() -> None:
        await pipeline.run_until_done(timeout_s=120)
        finished.set()

    async def recover() -> None:
        # Slow until the limiter has backed off to the floor, then fast.
        await loyalty.at_floor.wait()
        await asyncio.sleep(0.5)
        loyalty.latency_s = 0.0
        for _ in range(12_000):
            if finished.is_set():
                break
            after_recovery.append(limiter.concurrency)
            await asyncio.sleep(0.01)

    try:
        await pipeline.poll_inboxes()
        await asyncio.wait_for(asyncio.gather(run(), recover()), 150)
    finally:
        live_config.install(None)
        await pipeline.aclose()

    sizes = [c[1] for c in loyalty.calls]
    assert sizes[0] == 400  # starts at the live ceiling
    floor = sizes.index(100)
    slow_inflight = max(c[2] for c in loyalty.calls[floor : floor + 5])
    assert slow_inflight <= 2  # concurrency came down with the batch size
    assert 400 in sizes[floor:]  # back to the ceiling once latency dropped
    assert limiter.snapshot().increases >= 3  # grew back step by step
    assert max(after_recovery) >= 2  # concurrency too, not only the batch size
    async with db.unit_of_work() as s:
        batches = (await s.execute(select(PointsBatch))).scalars().all()
    assert sum(b.ok_count for b in batches) == n
    results, totals = feedback_of(pgp, root / "out" / f"FEEDBACK_{name}")
    assert totals.ok_count == n
