"""Live operation of a reward campaign: an operator adds, reorders, retires and restocks
rewards through one API process while customers claim through another (same database, same
Redis stock store: the production deployment); each change reaches the other process's
claims within 2 s, the process that made it at once, and each leaves an audit entry. A
restock during a storm of claims is used at once and never passed."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from incentive.app import create_app
from incentive.auth.models import AuditEntry
from incentive.db import Database
from incentive.rewards import claims
from incentive.settings import Settings
from tests.campaigns.conftest import World
from tests.coupons.conftest import customers
from tests.factories import Actor
from tests.rewards.conftest import claim, grants_of, left, option, reward_campaign

APPLY_WITHIN = 2.0
_keys = itertools.count()


@pytest.fixture
async def other(settings: Settings, db: Database, app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second API process of the same deployment (its own app, claim path and
    chain cache; the same database and stock store)."""
    if settings.stock_url is None:
        pytest.skip("processes share reward stock only through Redis (embedded: one process)")
    second = create_app(settings, db)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://two") as client:
            yield client


async def operate(
    client: httpx.AsyncClient, op: Actor, method: str, path: str, body: Any = None
) -> httpx.Response:
    headers = {**op.headers, "Idempotency-Key": f"op-{next(_keys)}"}
    r = await client.request(method, f"/api/v1{path}", json=body, headers=headers)
    assert r.status_code in (200, 201), r.text
    return r


async def until_given(
    client: httpx.AsyncClient, person: Actor, campaign_id: str, wanted: Callable[[Any], bool]
) -> float:
    """Claim through ``client`` until an answer satisfies ``wanted``; seconds it took."""
    start = time.monotonic()
    while True:
        r = await claim(client, person.headers, campaign_id)
        assert r.status_code in (201, 409), r.text
        if wanted(r):
            return time.monotonic() - start
        assert time.monotonic() - start < APPLY_WITHIN, f"not applied within 2 s: {r.text}"
        await asyncio.sleep(0.05)


def gives(code: str) -> Callable[[Any], bool]:
    return lambda r: r.status_code == 201 and r.json()["reward"] == code


async def audit(db: Database, campaign_id: str) -> list[tuple[str, str, str | None]]:
    async with db.unit_of_work() as s:
        rows = await s.scalars(
            select(AuditEntry)
            .where(AuditEntry.action.like("rewards.%"), AuditEntry.target.like(f"{campaign_id}%"))
            .order_by(AuditEntry.id)
        )
        return [(e.action, e.target, e.actor_id) for e in rows]


@pytest.mark.redis
async def test_changes_made_in_one_process_reach_claims_in_another_within_2_seconds(
    client: httpx.AsyncClient,
    other: httpx.AsyncClient,
    db: Database,
    world: World,
) -> None:
    campaign = await reward_campaign(
        client, db, world, [option("A", stock=1)], per_user_limit=1_000
    )
    cid, op, person = campaign["id"], world.op, world.cust
    path = f"/campaigns/{cid}/rewards"
    assert gives("A")(await claim(other, person.headers, cid))
    nothing = await claim(other, person.headers, cid)  # the other process has the chain now
    assert nothing.json()["type"].endswith("/no-reward-available")

    await operate(client, op, "POST", path, option("N", stock=50, amount=2))
    await until_given(other, person, cid, gives("N"))
    await operate(client, op, "POST", path, option("M", stock=50, amount=3))
    await operate(client, op, "PUT", f"{path}/order", {"codes": ["M", "N", "A"]})
    await until_given(other, person, cid, gives("M"))
    await operate(client, op, "DELETE", f"{path}/M")
    await until_given(other, person, cid, gives("N"))
    restocked = await operate(client, op, "POST", f"{path}/A/restocks", {"units": 2})
    assert restocked.json()["left"] == 2
    await operate(client, op, "PUT", f"{path}/order", {"codes": ["A", "N"]})
    await until_given(other, person, cid, gives("A"))

    assert await audit(db, cid) == [
        ("rewards.added", f"{cid}:N", op.user.id),
        ("rewards.added", f"{cid}:M", op.user.id),
        ("rewards.reordered", cid, op.user.id),
        ("rewards.retired", f"{cid}:M", op.user.id),
        ("rewards.restocked", f"{cid}:A", op.user.id),
        ("rewards.reordered", cid, op.user.id),
    ]
    # Both processes read the same stock, and it agrees with the grants on record.
    given = Counter(g.reward_code for g in await grants_of(db, cid))
    seen = await other.get(f"/api/v1{path}", headers=op.headers)
    rewards = {r["code"]: r for r in seen.json()["rewards"]}
    assert {c: (r["stock_total"], r["held"]) for c, r in rewards.items()} == {
        "A": (3, given["A"]),
        "N": (50, given["N"]),
        "M": (50, given["M"]),
    }
    assert rewards["M"]["retired_at"] is not None
    for code, r in rewards.items():
        assert r["left"] == r["stock_total"] - given[code], code


@pytest.mark.redis
async def test_a_restock_during_a_storm_on_two_processes_is_used_at_once_and_never_passed(
    client: httpx.AsyncClient,
    other: httpx.AsyncClient,
    db: Database,
    world: World,
    app: Any,
) -> None:
    chain = [option("R", stock=20), option("F", stock=1_000, amount=1)]
    cid = (await reward_campaign(client, db, world, chain))["id"]
    people = await customers(db, app, 80)
    sold_out = asyncio.Event()
    answers: list[httpx.Response] = []
    restocked = asyncio.Event()
    gate = asyncio.Semaphore(10)  # ten clients at a time

    async def one(i: int, person: Actor) -> None:
        if i >= 40:  # the second half of the storm comes after the restock, however slow
            await restocked.wait()
        async with gate:
            r = await claim(client if i % 2 else other, person.headers, cid)
        answers.append(r)
        if r.status_code == 201 and r.json()["reward"] == "F":
            sold_out.set()

    storm = asyncio.gather(*(one(i, p) for i, p in enumerate(people)))
    try:
        await asyncio.wait_for(sold_out.wait(), 60)  # R ran out mid-storm
        await operate(
            client, world.op, "POST", f"/campaigns/{cid}/rewards/R/restocks", {"units": 15}
        )
        restocked.set()
        await asyncio.wait_for(storm, 60)
    finally:
        storm.cancel()
        await asyncio.gather(storm, return_exceptions=True)
    assert Counter(r.status_code for r in answers) == {201: 80}
    given = Counter(g.reward_code for g in await grants_of(db, cid))
    assert given == {"R": 35, "F": 45}  # every restocked unit used by the storm, none beyond
    assert await left(client, world.op.headers, cid) == {"R": 0, "F": 1_000 - 45}


async def test_the_process_that_changes_the_chain_claims_from_the_new_chain_at_once(
    client: httpx.AsyncClient, db: Database, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chain cache never expires by itself here: only the change can refresh it.
    monkeypatch.setattr(claims, "chain_clock", lambda: 0.0)
    chain = [option("A", stock=10), option("B", stock=10, amount=2)]
    cid = (await reward_campaign(client, db, world, chain, per_user_limit=100))["id"]
    op, person, path = world.op, world.cust, f"/campaigns/{cid}/rewards"
    assert gives("A")(await claim(client, person.headers, cid))
    await operate(client, op, "PUT", f"{path}/order", {"codes": ["B", "A"]})
    assert gives("B")(await claim(client, person.headers, cid))
    await operate(client, op, "POST", path, option("C", stock=10, amount=3))
    await operate(client, op, "DELETE", f"{path}/B")
    assert gives("A")(await claim(client, person.headers, cid))
    await operate(client, op, "DELETE", f"{path}/A")
    assert gives("C")(await claim(client, person.headers, cid))
    assert Counter(g.reward_code for g in await grants_of(db, cid)) == {"A": 2, "B": 1, "C": 1}
