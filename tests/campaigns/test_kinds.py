"""Campaign kinds as plug-ins: the registry drives the schema, the core calls every hook in the
caller's transaction, and campaigns end by themselves at ``ends_at``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.app import create_app
from incentive.campaigns.kinds import (
    CampaignFacts,
    CampaignKind,
    KindRules,
    kind_names,
    register_kind,
    unregister_kind,
)
from incentive.campaigns.models import Campaign, CampaignTransition
from incentive.campaigns.runtime import end_due_campaigns
from incentive.config import service as config
from incentive.db import Database
from incentive.errors import Conflict
from incentive.settings import Settings
from tests.campaigns.conftest import World, announced, campaign_body, create, move, walk
from tests.factories import make_user


class ProbeRules(KindRules):
    kind: Literal["probe"] = "probe"
    size: int = 1


class ProbeKind(CampaignKind):
    """A kind that records each hook call (and can refuse an activation)."""

    name = "probe"
    rules = ProbeRules
    calls: list[tuple[str, str, str]] = []
    refuse_activation = False
    failing_end: str | None = None

    def budget_asset(self, rules: KindRules) -> str:
        return "POINTS"

    async def on_create(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        self.calls.append(("create", campaign.status, str(campaign.rules)))

    async def on_edit(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        self.calls.append(("edit", campaign.status, str(campaign.rules)))

    async def on_transition(
        self, session: AsyncSession, campaign: CampaignFacts, from_status: str
    ) -> None:
        self.calls.append(("transition", from_status, campaign.status))

    async def on_activate(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        if self.refuse_activation:
            raise Conflict("probe refuses to activate")
        self.calls.append(("activate", campaign.status, ""))

    async def on_end(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        if campaign.id == self.failing_end:
            raise RuntimeError("probe cannot end this one")
        self.calls.append(("end", campaign.status, ""))


@pytest.fixture
def probe() -> Iterator[ProbeKind]:
    kind = ProbeKind()
    kind.calls = []
    register_kind(kind)
    yield kind
    unregister_kind("probe")


def _body(kind: str, **overrides: Any) -> dict[str, Any]:
    """A campaign body of a kind without a sample in RULES (rebate's window and names)."""
    return {**campaign_body("rebate"), "kind": kind, **overrides}


def _probe_body(**overrides: Any) -> dict[str, Any]:
    return _body("probe", rules={"size": 2}, **overrides)


async def test_openapi_kind_enum_and_rules_union_come_from_the_registry(
    client: httpx.AsyncClient, probe: ProbeKind
) -> None:
    schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    campaign_in = components.get("CampaignIn") or components["CampaignIn-Input"]
    assert campaign_in["properties"]["kind"]["enum"] == kind_names()
    assert {"flash_sale", "rebate", "coupon", "reward", "referral", "probe"} <= set(kind_names())
    out = components.get("CampaignOut") or components["CampaignOut-Output"]
    refs = {one["$ref"].rsplit("/", 1)[1] for one in out["properties"]["rules"]["oneOf"]}
    assert {"ProbeRules", "FlashSaleRules", "RebateRules"} <= {r.split("-")[0] for r in refs}
    assert out["properties"]["rules"]["discriminator"]["propertyName"] == "kind"


async def test_unknown_kind_is_refused_by_name(client: httpx.AsyncClient, world: World) -> None:
    r = await client.post("/api/v1/campaigns", json=_body("lottery"), headers=world.ma.headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "kind"


async def test_every_hook_runs_on_every_route(
    client: httpx.AsyncClient, world: World, probe: ProbeKind
) -> None:
    r = await client.post("/api/v1/campaigns", json=_probe_body(), headers=world.ma.headers)
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    r = await client.patch(
        f"/api/v1/campaigns/{cid}", json={"rules": {"size": 3}}, headers=world.ma.headers
    )
    assert r.status_code == 200, r.text
    await walk(client, world, cid, "pending_review", "approved", "active", "paused", "active")
    await walk(client, world, cid, "ended")
    assert probe.calls == [
        ("create", "draft", "kind='probe' size=2"),
        ("edit", "draft", "kind='probe' size=3"),
        ("transition", "draft", "pending_review"),
        ("transition", "pending_review", "approved"),
        ("transition", "approved", "active"),
        ("activate", "active", ""),
        ("transition", "active", "paused"),
        ("transition", "paused", "active"),
        ("activate", "active", ""),
        ("transition", "active", "ended"),
        ("end", "ended", ""),
    ]


async def test_a_hook_that_refuses_rolls_the_transition_back(
    db: Database, client: httpx.AsyncClient, world: World, probe: ProbeKind
) -> None:
    r = await client.post("/api/v1/campaigns", json=_probe_body(), headers=world.ma.headers)
    cid = r.json()["id"]
    await walk(client, world, cid, "pending_review", "approved")
    probe.refuse_activation = True
    r = await move(client, world.ma, cid, "active")
    assert r.status_code == 409, r.text
    async with db.unit_of_work() as s:
        campaign = await s.get(Campaign, cid)
        assert campaign is not None
        assert campaign.status == "approved"
        moves = (
            await s.execute(
                select(CampaignTransition.to_status).where(CampaignTransition.campaign_id == cid)
            )
        ).scalars()
        assert "active" not in list(moves)
    assert ("approved", "active") not in await announced(db, cid)


async def _due_campaign(client: httpx.AsyncClient, world: World, seconds: float) -> str:
    now = datetime.now(UTC)
    body = _probe_body(
        starts_at=(now - timedelta(hours=1)).isoformat(),
        ends_at=(now + timedelta(seconds=seconds)).isoformat(),
    )
    r = await client.post("/api/v1/campaigns", json=body, headers=world.ma.headers)
    assert r.status_code == 201, r.text
    cid = str(r.json()["id"])
    await walk(client, world, cid, "pending_review", "approved", "active")
    return cid


async def test_campaigns_end_by_themselves_at_ends_at(
    db: Database, client: httpx.AsyncClient, world: World, probe: ProbeKind
) -> None:
    due = await _due_campaign(client, world, 4.0)
    paused = await _due_campaign(client, world, 4.0)
    await walk(client, world, paused, "paused")
    later = await create(client, world.ma)  # a rebate ending in a week
    await walk(client, world, later["id"], "pending_review", "approved", "active")
    await asyncio.sleep(4.2)  # windows wide enough for a loaded CI machine
    assert sorted(await end_due_campaigns(db)) == sorted([due, paused])
    assert await end_due_campaigns(db) == []  # nothing twice
    for cid in (due, paused):
        r = await client.get(f"/api/v1/campaigns/{cid}/history", headers=world.ma.headers)
        last = r.json()["items"][-1]
        assert (last["to_status"], last["actor"]) == ("ended", "system")
        assert ("end", "ended", "") in probe.calls
    r = await client.get(f"/api/v1/campaigns/{later['id']}", headers=world.ma.headers)
    assert r.json()["status"] == "active"


async def test_the_worker_job_ends_due_campaigns_on_its_own(
    db: Database, settings: Settings, probe: ProbeKind
) -> None:
    async with db.unit_of_work() as s:
        await config.set_value(s, "campaigns.end_check_seconds", 0.2, actor="test")
    app = create_app(settings.model_copy(update={"embedded_worker": True}), db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            from tests.factories import make_merchant

            shop = await make_merchant(db, code="W")
            world = World(
                op=await make_user(db, app, username="wop", role="operator"),
                ma=await make_user(db, app, username="wma", role="merchant", merchant_id=shop.id),
                mb=await make_user(db, app, username="wmb", role="merchant", merchant_id=shop.id),
                cust=await make_user(db, app, username="wc"),
                merchant_a=shop.id,
                merchant_b=shop.id,
            )
            # 3 s to walk it to active: every worker job starts with the app (a loaded CI
            # machine took more than the 1 s this had), then up to 20 s for the job to end it.
            cid = await _due_campaign(client, world, 3.0)
            for _ in range(200):
                r = await client.get(f"/api/v1/campaigns/{cid}", headers=world.ma.headers)
                if r.json()["status"] == "ended":
                    break
                await asyncio.sleep(0.1)
            assert r.json()["status"] == "ended"


def test_a_kind_must_say_its_budget_asset_and_match_its_rules_tag() -> None:
    class NoAsset(CampaignKind):
        name = "probe"
        rules = ProbeRules

    with pytest.raises(TypeError, match="budget_asset"):
        NoAsset()  # type: ignore[abstract]

    class Mismatch(ProbeKind):
        name = "other"

    with pytest.raises(ValueError, match="must default kind"):
        register_kind(Mismatch())
    assert "other" not in kind_names()


async def test_a_failing_end_hook_does_not_keep_other_campaigns_running(
    db: Database, client: httpx.AsyncClient, world: World, probe: ProbeKind
) -> None:
    # Windows of 3 s: activating two campaigns took over 1 s on a loaded CI machine.
    stuck = await _due_campaign(client, world, 3.0)
    fine = await _due_campaign(client, world, 3.0)
    probe.failing_end = stuck
    await asyncio.sleep(3.2)
    assert await end_due_campaigns(db) == [fine]
    statuses = {}
    for cid in (stuck, fine):
        r = await client.get(f"/api/v1/campaigns/{cid}", headers=world.ma.headers)
        statuses[cid] = r.json()["status"]
    assert statuses == {stuck: "active", fine: "ended"}
    assert ("active", "ended") not in await announced(db, stuck)  # rolled back whole
    probe.failing_end = None
    assert await end_due_campaigns(db) == [stuck]  # tried again on the next run
