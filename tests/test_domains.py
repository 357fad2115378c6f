"""The one list of domains drives the app, the CLI and the schema: nothing is forgotten."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from incentive import domains
from incentive.db import Database
from tests.factories import make_user


async def _cli(database_url: str, data_dir: Path, *args: str) -> tuple[int, str, str]:
    # A fresh process: it knows only what the CLI itself loads (the bug was 5 keys of 15).
    # Async, so the app's own background tasks keep running (and release SQLite's lock).
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        *args,
        env={
            **os.environ,
            "INCENTIVE_DATABASE_URL": database_url,
            "INCENTIVE_DATA_DIR": str(data_dir),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_cli_knows_every_live_config_key_the_api_lists(
    db: Database, app: Any, client: httpx.AsyncClient, database_url: str, data_dir: Path
) -> None:
    op = await make_user(db, app, username="cfg-op", role="operator")
    listed = (await client.get("/api/v1/config?limit=200", headers=op.headers)).json()
    assert listed["next_cursor"] is None
    listed_by_api = listed["items"]
    # Tests register keys of their own (test_*) in this process only.
    api_keys = {v["key"] for v in listed_by_api if not v["key"].startswith("test_")}
    code, out, err = await _cli(database_url, data_dir, "config", "list")
    assert code == 0, err
    cli_keys = {json.loads(line)["key"] for line in out.splitlines()}
    assert cli_keys == api_keys
    assert {"flash_sale.drain_seconds", "campaigns.end_check_seconds"} <= cli_keys
    code, out, err = await _cli(database_url, data_dir, "config", "get", "flash_sale.drain_seconds")
    assert code == 0, err
    assert json.loads(out)["value"] == 5.0


async def test_every_declared_router_and_cli_group_is_mounted(client: httpx.AsyncClient) -> None:
    paths = set((await client.get("/openapi.json")).json()["paths"])
    for domain in domains.DOMAINS:
        if domain.router:
            router = domain.module("api").router
            assert any(p.startswith("/api/v1" + router.prefix) for p in paths), domain.name
    from incentive.cli import app as cli_app

    groups = {group.name for group in cli_app.registered_groups}
    assert {"users", "config", "events", "flash-sales", "points-files"} <= groups


async def test_each_route_documents_the_problems_it_can_answer(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    declared = {
        (method.upper(), path): {code for code in op["responses"] if code.startswith(("4", "5"))}
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    assert declared[("GET", "/healthz")] == set()
    assert declared[("GET", "/api/v1/campaigns/{campaign_id}")] == {"401", "404", "422"}
    purchase = declared[("POST", "/api/v1/flash-sales/{sale_id}/purchases")]
    assert {"401", "403", "404", "409", "422", "503"} <= purchase
    assert "503" not in declared[("PATCH", "/api/v1/campaigns/{campaign_id}")]
    assert len({frozenset(v) for v in declared.values()}) > 5  # not the same set everywhere
    for (method, path), codes in declared.items():
        if path.startswith("/api/v1/") and path != "/api/v1/auth/token":
            assert "401" in codes or method == "POST" and "auth" in path, (method, path)
    problem = spec["paths"]["/api/v1/campaigns/{campaign_id}"]["get"]["responses"]["404"]
    assert "application/problem+json" in problem["content"]
    assert "not-found" in problem["description"]
