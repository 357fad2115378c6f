from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.campaigns.conftest import World
from tests.campaigns.conftest import world as world  # the fixture
from tests.factories import Actor


async def word_list(
    client: httpx.AsyncClient,
    app: Any,
    op: Actor,
    name: str,
    words: list[str],
    severity: str = "reject",
) -> dict[str, Any]:
    """A list with ``words``, applied in this process's matcher."""
    r = await client.post(
        "/api/v1/review/word-lists", json={"name": name, "severity": severity}, headers=op.headers
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        f"/api/v1/review/word-lists/{name}/words", json={"words": words}, headers=op.headers
    )
    assert r.status_code == 200, r.text
    await app.state.review.refresh()
    body: dict[str, Any] = r.json()["list"]
    return body


async def submit(client: httpx.AsyncClient, world: World, campaign_id: str) -> dict[str, Any]:
    r = await client.post(
        f"/api/v1/campaigns/{campaign_id}/transitions",
        json={"to": "pending_review"},
        headers=world.ma.headers,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def verdicts(client: httpx.AsyncClient, actor: Actor, campaign_id: str) -> list[Any]:
    r = await client.get(f"/api/v1/campaigns/{campaign_id}/review", headers=actor.headers)
    assert r.status_code == 200, r.text
    items: list[Any] = r.json()["items"]
    return items


@pytest.fixture
def cli_env(database_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of an `incentive` command against the test's database."""
    return {
        **os.environ,
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DATA_DIR": str(data_dir),
        "INCENTIVE_LOG_LEVEL": "WARNING",
    }
