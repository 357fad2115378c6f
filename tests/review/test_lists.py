"""Issue 15: operators keep the sensitive-word lists over the API and the CLI — versioned,
audited, a 100,000-word file imported at once — and bad input writes nothing."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.auth.models import AuditEntry
from incentive.db import Database
from incentive.review.models import SensitiveWord, WordList, WordListChange
from tests.campaigns.conftest import World


def _words(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < n:
        found["".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(2, 5)))] = None
    return list(found)


async def _state(db: Database) -> tuple[int, int, int, int]:
    async with db.unit_of_work() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(WordList)) or 0),
            int(await s.scalar(select(func.count()).select_from(SensitiveWord)) or 0),
            int(await s.scalar(select(func.count()).select_from(WordListChange)) or 0),
            int(await s.scalar(select(func.count()).select_from(AuditEntry)) or 0),
        )


async def test_every_change_is_a_new_version_recorded_and_audited(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    h = world.op.headers
    base = "/api/v1/review/word-lists"
    r = await client.post(base, json={"name": "ads", "severity": "hold"}, headers=h)
    assert r.status_code == 201
    assert (r.json()["version"], r.json()["word_count"]) == (1, 0)
    r = await client.post(
        f"{base}/ads/words", json={"words": ["代购", " 代购 ", "刷单"]}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == 2
    assert (r.json()["list"]["version"], r.json()["list"]["word_count"]) == (2, 2)
    r = await client.post(
        f"{base}/ads/words/removal", json={"words": ["刷单", "absent"]}, headers=h
    )
    assert (r.json()["changed"], r.json()["list"]["version"]) == (1, 3)
    r = await client.patch(f"{base}/ads", json={"severity": "reject"}, headers=h)
    assert (r.json()["severity"], r.json()["version"]) == ("reject", 4)
    changes = (await client.get(f"{base}/ads/changes", headers=h)).json()["items"]
    assert [(c["version"], c["action"], c["words"]) for c in changes] == [
        (4, "severity", 0),
        (3, "remove", 1),
        (2, "add", 2),
        (1, "create", 0),
    ]
    assert changes[0]["detail"] == {"from": "hold", "to": "reject"}
    assert {c["actor"] for c in changes} == {world.op.user.id}
    words = (await client.get(f"{base}/ads/words", headers=h)).json()["items"]
    assert words == [{"word": "代购", "added_in": 2}]
    async with db.unit_of_work() as s:
        audited = (
            await s.execute(
                select(AuditEntry.action, AuditEntry.actor_id)
                .where(AuditEntry.target == "ads")
                .order_by(AuditEntry.id)
            )
        ).all()
    assert [a for a, _ in audited] == [
        "review.words.create",
        "review.words.add",
        "review.words.remove",
        "review.words.severity",
    ]
    assert {actor for _, actor in audited} == {world.op.user.id}


async def test_an_import_of_100000_words_replaces_the_list(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    h = world.op.headers
    base = "/api/v1/review/word-lists"
    await client.post(base, json={"name": "big"}, headers=h)
    await client.post(f"{base}/big/words", json={"words": ["旧词"]}, headers=h)
    words = _words(100_000)
    r = await client.put(f"{base}/big/words", json={"words": words}, headers=h, timeout=120)
    assert r.status_code == 200, r.text
    assert (r.json()["changed"], r.json()["list"]["word_count"]) == (100_000, 100_000)
    async with db.unit_of_work() as s:
        stored = set(await s.scalars(select(SensitiveWord.word)))
    assert stored == set(words)  # the old word went with the replace


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"words": ["x" * 101]}, "words.0"),
        ({"words": ["ok", "bad\u0007"]}, "words.1"),
        ({"words": []}, "words"),
        ({"words": "发票"}, "words"),
    ],
)
async def test_bad_words_are_refused_naming_the_field_and_write_nothing(
    db: Database, client: httpx.AsyncClient, world: World, body: dict[str, Any], field: str
) -> None:
    await client.post("/api/v1/review/word-lists", json={"name": "ads"}, headers=world.op.headers)
    before = await _state(db)
    r = await client.post(
        "/api/v1/review/word-lists/ads/words", json=body, headers=world.op.headers
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
    assert await _state(db) == before


async def test_lists_are_for_operators_only_and_names_are_checked(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    before = await _state(db)
    for actor in (world.ma, world.cust):
        r = await client.post(
            "/api/v1/review/word-lists", json={"name": "ads"}, headers=actor.headers
        )
        assert r.status_code == 403
        r = await client.get("/api/v1/review/word-lists/ads", headers=actor.headers)
        assert r.status_code == 403
    r = await client.post(
        "/api/v1/review/word-lists", json={"name": "Ads!"}, headers=world.op.headers
    )
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "name")
    r = await client.post(
        "/api/v1/review/word-lists",
        json={"name": "ads", "severity": "ban"},
        headers=world.op.headers,
    )
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "severity")
    assert await _state(db) == before
    r = await client.get("/api/v1/review/word-lists/none", headers=world.op.headers)
    assert r.status_code == 404
    assert r.json()["type"].endswith("/word-list-not-found")
    await client.post("/api/v1/review/word-lists", json={"name": "ads"}, headers=world.op.headers)
    r = await client.post(
        "/api/v1/review/word-lists", json={"name": "ads"}, headers=world.op.headers
    )
    assert (r.status_code, r.json()["errors"][0]["rule"]) == (422, "unique")


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "incentive.cli",
        "review",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_imports_a_file_and_changes_lists(
    db: Database, cli_env: dict[str, str], tmp_path: Path
) -> None:
    words = _words(20_000, seed=3)
    file = tmp_path / "words.txt"
    file.write_text("\n".join([*words, "", "  "]) + "\n", encoding="utf-8")
    code, out, err = await _cli(cli_env, "create", "imported", "--severity", "hold")
    assert code == 0, err
    code, out, err = await _cli(cli_env, "import", "imported", str(file))
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["version"], shown["word_count"], shown["changed"]) == (2, 20_000, 20_000)
    code, out, _ = await _cli(cli_env, "remove", "imported", words[0], words[1])
    assert json.loads(out)["word_count"] == 19_998
    code, out, _ = await _cli(cli_env, "severity", "imported", "reject")
    assert json.loads(out)["severity"] == "reject"
    code, out, _ = await _cli(cli_env, "lists")
    assert json.loads(out)["lists"][0]["version"] == 4
    bad = tmp_path / "bad.txt"
    bad.write_text("ok\n" + "x" * 101 + "\n", encoding="utf-8")
    before = await _state(db)
    code, out, err = await _cli(cli_env, "import", "imported", str(bad))
    assert code == 2
    assert err.startswith("error: bad.txt: line.1")
    code, _, err = await _cli(cli_env, "severity", "imported", "ban")
    assert code == 2
    code, _, err = await _cli(cli_env, "add", "missing", "词")
    assert (code, err.strip()) == (1, "error: no word list named missing")
    assert await _state(db) == before
