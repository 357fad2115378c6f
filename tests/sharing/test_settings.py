"""Sharing settings: set by the campaign's manager while it is a draft or rejected, checked
at the field, audited; what the reviewer approved is what runs."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from incentive.auth.models import AuditEntry
from incentive.db import Database
from incentive.sharing.models import SharingSettings
from tests.campaigns.conftest import World, assisted_review, walk
from tests.coupons.conftest import coupon_campaign
from tests.sharing.conftest import H, count, draft, put_sharing, rows


async def test_settings_default_to_off_and_the_manager_sets_them_audited(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign = await draft(client, world)
    url = f"{H}/campaigns/{campaign['id']}/sharing"
    default = (await client.get(url, headers=world.ma.headers)).json()
    assert default == {
        "campaign_id": campaign["id"],
        "enabled": False,
        "coupon_batch_id": None,
        "coupons_per_sharer": 1,
        "attribution_hours": 72,
        "conversion_types": ["payment"],
        "updated_at": None,
    }
    _, batch = await coupon_campaign(client, world)
    r = await put_sharing(
        client,
        world.ma,
        campaign["id"],
        enabled=True,
        coupon_batch_id=batch,
        coupons_per_sharer=2,
        attribution_hours=24,
        conversion_types=["payment", "signup"],
    )
    assert r.status_code == 200, r.text
    assert (await client.get(url, headers=world.op.headers)).json()["coupons_per_sharer"] == 2
    async with db.unit_of_work() as s:
        audit = list(
            await s.scalars(select(AuditEntry).where(AuditEntry.action == "sharing.settings"))
        )
    assert [(a.actor_id, a.target) for a in audit] == [
        (world.ma.user.id, f"campaign:{campaign['id']}")
    ]
    assert audit[0].detail["coupon_batch_id"] == batch
    # The settings are part of the campaign as reviewed: its version moved.
    got = await client.get(f"{H}/campaigns/{campaign['id']}", headers=world.ma.headers)
    assert got.json()["version"] == campaign["version"] + 1


async def test_bad_settings_are_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    campaign = await draft(client, world)
    _, other_merchants_batch = await coupon_campaign(client, world, owner="operator")
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"enabled": True, "coupons_per_sharer": 0}, "coupons_per_sharer", None),
        ({"enabled": True, "attribution_hours": 721}, "attribution_hours", None),
        ({"enabled": True, "conversion_types": ["refund"]}, "conversion_types.0", None),
        ({"enabled": True, "conversion_types": []}, "conversion_types", None),
        ({"enabled": True, "conversion_types": ["payment", "payment"]}, "conversion_types", None),
        ({"enabled": True, "coupon_batch_id": "nosuchbatch"}, "coupon_batch_id", "exists"),
        (
            {"enabled": True, "coupon_batch_id": other_merchants_batch},
            "coupon_batch_id",
            "same-owner",
        ),
        ({"enabled": True, "colour": "red"}, "colour", None),
        ({}, "enabled", None),
    ]
    for body, field, rule in cases:
        r = await put_sharing(client, world.ma, campaign["id"], **body)
        assert r.status_code == 422, (body, r.text)
        error = r.json()["errors"][0]
        assert error["field"] == field, (body, r.json())
        if rule:
            assert error["rule"] == rule
    assert await count(db, SharingSettings) == 0
    got = await client.get(f"{H}/campaigns/{campaign['id']}", headers=world.ma.headers)
    assert got.json()["version"] == campaign["version"]


async def test_settings_cannot_change_once_submitted_and_only_the_manager_sets_them(
    client: httpx.AsyncClient, db: Database, app: Any, world: World
) -> None:
    await assisted_review(db, app)  # held for a person, who rejects it below
    campaign = await draft(client, world)
    assert (await put_sharing(client, world.ma, campaign["id"], enabled=False)).status_code == 200
    await walk(client, world, campaign["id"], "pending_review")
    refused = await put_sharing(client, world.ma, campaign["id"], enabled=True)
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("campaign-not-editable")
    (row,) = await rows(db, SharingSettings)
    assert row.enabled is False
    # Rejected: editable again; approved and active: not.
    await walk(client, world, campaign["id"], "rejected")
    assert (await put_sharing(client, world.ma, campaign["id"], enabled=True)).status_code == 200
    await walk(client, world, campaign["id"], "draft", "pending_review", "approved", "active")
    assert (await put_sharing(client, world.op, campaign["id"], enabled=False)).status_code == 409
    # Seen (active) but not managed: 403; another merchant's draft: 404.
    assert (await put_sharing(client, world.cust, campaign["id"], enabled=False)).status_code == 403
    assert (await put_sharing(client, world.mb, campaign["id"], enabled=False)).status_code == 403
    hidden = await draft(client, world)
    r = await put_sharing(client, world.mb, hidden["id"], enabled=True)
    assert r.status_code == 404
    assert (
        await client.get(f"{H}/campaigns/{hidden['id']}/sharing", headers=world.cust.headers)
    ).status_code == 404
