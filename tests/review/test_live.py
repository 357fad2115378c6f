"""Issue 15: a list change made in one process reaches the matcher of another, a real
`incentive serve` subprocess, within 2 seconds, without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from incentive.db import Database
from tests.campaigns.conftest import World
from tests.servers import running_server

APPLY_WITHIN = 2.0


async def test_a_list_change_reaches_another_process_within_2_seconds(
    app: Any, db: Database, database_url: str, data_dir: Path, world: World
) -> None:
    h = world.op.headers
    async with (
        running_server(data_dir, database_url) as server,
        httpx.AsyncClient(base_url=server.base_url, headers=h) as there,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://here") as here,
    ):
        probe = {"texts": {"description": "today only: 刷单 wanted"}}
        first = await there.post("/api/v1/review/screenings", json=probe)
        assert first.status_code == 200, first.text
        assert first.json()["verdict"] == "approved"
        for change in (
            ("post", "/api/v1/review/word-lists", {"name": "ads", "severity": "hold"}),
            ("post", "/api/v1/review/word-lists/ads/words", {"words": ["刷单"]}),
        ):
            method, url, body = change
            r = await here.request(method, url, json=body, headers=h)
            assert r.status_code in (200, 201), r.text
        started = time.monotonic()
        while True:
            seen = (await there.post("/api/v1/review/screenings", json=probe)).json()
            if seen["hits"]:
                break
            assert time.monotonic() - started < APPLY_WITHIN, seen
            await asyncio.sleep(0.05)
        assert seen["verdict"] == "held"
        assert [(h["matched"], h["list"], h["list_version"]) for h in seen["hits"]] == [
            ("刷单", "ads", 2)
        ]
        # and out again: a removal travels the same way
        r = await here.post(
            "/api/v1/review/word-lists/ads/words/removal", json={"words": ["刷单"]}, headers=h
        )
        assert r.status_code == 200
        started = time.monotonic()
        while (await there.post("/api/v1/review/screenings", json=probe)).json()["hits"]:
            assert time.monotonic() - started < APPLY_WITHIN
            await asyncio.sleep(0.05)
    assert "Traceback" not in server.log_path.read_text()
