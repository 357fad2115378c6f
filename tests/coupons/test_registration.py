"""Registering a coupon provider over the API and from the command line: both audited
(who, what, never the credentials nor the secret), the generated webhook secret shown once
in Standard Webhooks' ``whsec_`` form, and the provider listed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from typing import Any

import httpx
from sqlalchemy import select

from incentive.auth.models import AuditEntry
from incentive.db import Database
from incentive.settings import Settings
from tests.campaigns.conftest import World


async def audit(db: Database) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    async with db.unit_of_work() as s:
        rows = await s.scalars(
            select(AuditEntry)
            .where(AuditEntry.action.like("coupons.provider%"))
            .order_by(AuditEntry.id)
        )
        return [(e.action, e.target, e.actor_id, dict(e.detail)) for e in rows]


async def cli(settings: Settings, database_url: str, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "INCENTIVE_DATA_DIR": str(settings.data_dir),
        "INCENTIVE_DATABASE_URL": database_url,
        "INCENTIVE_DEMO_DATA": "false",
        "INCENTIVE_LOG_LEVEL": "ERROR",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "incentive.cli", "coupons", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    answer: dict[str, Any] = json.loads(out)
    return answer


async def test_a_provider_registered_over_the_api_or_the_cli_is_audited_without_its_secrets(
    client: httpx.AsyncClient, db: Database, world: World, settings: Settings, database_url: str
) -> None:
    r = await client.post(
        "/api/v1/coupon-providers",
        json={
            "code": "acme",
            "name": "Acme",
            "base_url": "http://127.0.0.1:9",
            "credentials": "acme-key",
        },
        headers=world.op.headers,
    )
    assert r.status_code == 201, r.text
    assert "acme-key" not in r.text
    changed = await client.patch(
        "/api/v1/coupon-providers/acme",
        json={"credentials": "new-key", "name": "Acme Ltd"},
        headers=world.op.headers,
    )
    assert changed.status_code == 200, changed.text
    refused = await client.post(
        "/api/v1/coupon-providers",
        json={"code": "x1", "name": "X", "base_url": "http://127.0.0.1:9", "credentials": "k"},
        headers=world.ma.headers,
    )
    assert refused.status_code == 403

    added = await cli(
        settings, database_url, "providers", "add", "beta", "--name", "Beta",
        "--base-url", "http://127.0.0.1:9", "--credentials", "beta-key",
    )  # fmt: skip
    secret = added["webhook_secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert added["webhook_url"] == "/api/v1/coupon-providers/beta/webhooks"
    listed = await cli(settings, database_url, "providers", "list")
    assert sorted(p["code"] for p in listed["providers"]) == ["acme", "beta"]

    entries = await audit(db)
    assert [(a, t, who) for a, t, who, _ in entries] == [
        ("coupons.provider_registered", "acme", world.op.user.id),
        ("coupons.provider_changed", "acme", world.op.user.id),
        ("coupons.provider_registered", "beta", None),
    ]
    assert entries[1][3] == {"credentials": "(changed)", "name": "Acme Ltd"}
    recorded = json.dumps([e[3] for e in entries])
    assert "acme-key" not in recorded
    assert "new-key" not in recorded
    assert "beta-key" not in recorded
    assert secret not in recorded
