"""Listing codes with paging and by state, the streamed CSV export, voiding, and the
`incentive join-codes` commands."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from incentive.db import Database
from incentive.join_codes import service
from tests.campaigns.conftest import World
from tests.join_codes.conftest import audited, codes_of, generate, redeem


async def _all_pages(client: httpx.AsyncClient, url: str, headers: Any, **params: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    pages = 0
    while True:
        q = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get(url, params=q, headers=headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        pages += 1
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_codes_are_listed_in_pages_with_state_and_redeemer(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    assert (await generate(client, world.op, campaign, 120)).status_code == 201
    url = f"/api/v1/campaigns/{campaign}/join-codes"
    first = await client.get(url, params={"limit": 50}, headers=world.op.headers)
    assert len(first.json()["items"]) == 50
    assert first.json()["next_cursor"]
    listed = await _all_pages(client, url, world.op.headers, limit=50)
    codes = [c["code"] for c in listed]
    assert codes == sorted(codes)
    assert len(set(codes)) == 120
    assert codes == [r.code for r in await codes_of(db, campaign)]
    assert (await redeem(client, world.ma, codes[7])).status_code == 201
    r = await client.post(f"{url}/void", json={"codes": codes[10:13]}, headers=world.op.headers)
    assert r.json() == {"campaign_id": campaign, "voided": 3}
    used = await _all_pages(client, url, world.op.headers, status="used", limit=2)
    assert [(c["code"], c["redeemed_by_merchant_id"]) for c in used] == [
        (codes[7], world.merchant_a)
    ]
    assert used[0]["redeemed_by_user_id"] == world.ma.user.id
    assert used[0]["redeemed_at"]
    void = await _all_pages(client, url, world.op.headers, status="void", limit=2)
    assert [c["code"] for c in void] == codes[10:13]
    assert all(c["voided_at"] for c in void)
    assert len(await _all_pages(client, url, world.op.headers, status="unused")) == 116
    for params, field in (({"status": "spent"}, "status"), ({"limit": 0}, "limit")):
        r = await client.get(url, params=params, headers=world.op.headers)
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == field
    r = await client.get(url, params={"cursor": "bm90LWEtY3Vyc29y"}, headers=world.op.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "cursor"
    for actor in (world.ma, world.cust):
        assert (await client.get(url, headers=actor.headers)).status_code == 403
    r = await client.get(f"/api/v1/campaigns/{'0' * 32}/join-codes", headers=world.op.headers)
    assert r.status_code == 404


async def test_joined_merchants_are_listed_in_pages(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database, app: Any
) -> None:
    from tests.factories import make_merchant, make_user

    assert (await generate(client, world.op, campaign, 5)).status_code == 201
    codes = [r.code for r in await codes_of(db, campaign)]
    joined = []
    for i, code in enumerate(codes):
        m = await make_merchant(db, code=f"P{i}")
        staff = await make_user(db, app, username=f"p{i}", role="merchant", merchant_id=m.id)
        assert (await redeem(client, staff, code)).status_code == 201
        joined.append(m.id)
    url = f"/api/v1/campaigns/{campaign}/merchants"
    items = await _all_pages(client, url, world.op.headers, limit=2)
    assert [m["merchant_id"] for m in items] == joined
    assert [m["code"] for m in items] == codes


async def test_the_csv_export_streams_every_code_in_chunks(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    assert (await generate(client, world.op, campaign, 12_345, prefix="EX")).status_code == 201
    codes = [r.code for r in await codes_of(db, campaign)]
    assert (await redeem(client, world.ma, codes[0])).status_code == 201
    r = await client.get(
        f"/api/v1/campaigns/{campaign}/join-codes/export", headers=world.op.headers
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == list(service.EXPORT_COLUMNS)
    assert [row[0] for row in rows[1:]] == codes
    assert rows[1][1:2] == ["used"]
    assert rows[1][3] == world.merchant_a
    assert {row[1] for row in rows[2:]} == {"unused"}
    # The rows are read chunk by chunk: 12,345 codes in 5,000-row pieces, header first.
    pieces = [p async for p in service.export_chunks(db.reader, campaign)]
    assert [p.count("\n") for p in pieces] == [1, 5000, 5000, 2345]
    assert "".join(pieces) == r.text
    used = await client.get(
        f"/api/v1/campaigns/{campaign}/join-codes/export",
        params={"status": "used"},
        headers=world.op.headers,
    )
    assert used.text.splitlines()[1:] == [rows[1] and ",".join(rows[1])]
    for actor in (world.ma, world.cust):
        r = await client.get(
            f"/api/v1/campaigns/{campaign}/join-codes/export", headers=actor.headers
        )
        assert r.status_code == 403


async def test_voiding_all_unused_codes_leaves_used_ones(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    assert (await generate(client, world.op, campaign, 30)).status_code == 201
    codes = [r.code for r in await codes_of(db, campaign)]
    assert (await redeem(client, world.ma, codes[3])).status_code == 201
    url = f"/api/v1/campaigns/{campaign}/join-codes/void"
    r = await client.post(url, json={"all_unused": True}, headers=world.op.headers)
    assert r.status_code == 200
    assert r.json()["voided"] == 29
    again = await client.post(url, json={"all_unused": True}, headers=world.op.headers)
    assert again.json()["voided"] == 0
    states = {c.code: c.status for c in await codes_of(db, campaign)}
    assert states.pop(codes[3]) == "used"
    assert set(states.values()) == {"void"}
    assert await audited(db, "join_codes.void") == 2


async def test_void_refuses_bad_input_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    assert (await generate(client, world.op, campaign, 3)).status_code == 201
    url = f"/api/v1/campaigns/{campaign}/join-codes/void"
    cases: list[tuple[Any, str]] = [
        ({}, "codes"),
        ({"codes": ["A"], "all_unused": True}, "all_unused"),
        ({"codes": []}, "codes"),
        ({"codes": ["AB\u0000C"]}, "codes.0"),
        ({"codes": ["A"] * 1001}, "codes"),
        ({"all_unused": "yes"}, "all_unused"),
    ]
    for body, field in cases:
        r = await client.post(url, json=body, headers=world.op.headers)
        assert r.status_code == 422, (body, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], r.text
    for actor in (world.ma, world.cust):
        r = await client.post(url, json={"all_unused": True}, headers=actor.headers)
        assert r.status_code == 403
    assert {c.status for c in await codes_of(db, campaign)} == {"unused"}


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "join-codes",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_commands_generate_export_and_void(
    world: World, campaign: str, db: Database, database_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(tmp_path),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_LOG_LEVEL": "ERROR",
    }
    code, out, err = await _cli(env, "generate", campaign, "--count", "40", "--prefix", "CMD")
    assert code == 0, err
    assert json.loads(out) == {"campaign_id": campaign, "count": 40, "prefix": "CMD"}
    code, out, err = await _cli(env, "export", campaign)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ",".join(service.EXPORT_COLUMNS)
    assert len(lines) == 41
    first = lines[1].split(",")[0]
    target = tmp_path / "codes.csv"
    code, out, err = await _cli(env, "export", campaign, "--output", str(target))
    assert code == 0
    assert json.loads(out)["rows"] == 40
    assert target.read_text() == "\n".join(lines) + "\n"
    code, out, err = await _cli(env, "void", campaign, "--code", first)
    assert (code, json.loads(out)["voided"]) == (0, 1)
    code, out, err = await _cli(env, "void", campaign, "--all-unused")
    assert (code, json.loads(out)["voided"]) == (0, 39)
    code, out, err = await _cli(env, "generate", campaign, "--count", "0")
    assert code == 2
    assert "count" in err
    code, out, err = await _cli(env, "generate", "f" * 32, "--count", "3")
    assert code == 1
    assert "does not exist" in err
    code, out, err = await _cli(env, "void", campaign)
    assert code == 2
    assert {c.status for c in await codes_of(db, campaign)} == {"void"}
    assert await audited(db, "join_codes.generate") == 1
