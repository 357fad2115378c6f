"""The status machine: valid and invalid moves, who may make them, races, history."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from incentive.db import Database
from tests.campaigns.conftest import (
    World,
    announced,
    assisted_review,
    counts,
    create,
    move,
    walk,
)


@pytest.fixture(autouse=True)
async def _people_decide(db: Database, app: Any) -> None:
    """The machine as people drive it: every submission waits for an operator (the automated
    verdicts are tested in ``tests/review``)."""
    await assisted_review(db, app)


async def test_full_lifecycle_and_history(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    c = await create(client, world.ma)
    cid = c["id"]
    steps = [
        (world.ma, "pending_review", ""),
        (world.op, "rejected", "description mentions a banned word"),
        (world.ma, "draft", "fixed"),
        (world.ma, "pending_review", ""),
        (world.op, "approved", "fine"),
        (world.ma, "active", ""),
        (world.ma, "paused", "stock check"),
        (world.ma, "active", ""),
        (world.op, "ended", "done"),
    ]
    version = 1
    for actor, to, reason in steps:
        r = await move(client, actor, cid, to, reason)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == to
        assert r.json()["version"] == version + 1
        version += 1

    r = await client.get(f"/api/v1/campaigns/{cid}/history", headers=world.ma.headers)
    assert r.status_code == 200
    history = r.json()["items"]
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "draft"),
        ("draft", "pending_review"),
        ("pending_review", "rejected"),
        ("rejected", "draft"),
        ("draft", "pending_review"),
        ("pending_review", "approved"),
        ("approved", "active"),
        ("active", "paused"),
        ("paused", "active"),
        ("active", "ended"),
    ]
    assert history[2]["reason"] == "description mentions a banned word"
    assert history[2]["actor"] == world.op.user.id
    assert history[2]["actor_role"] == "operator"
    assert history[1]["actor"] == world.ma.user.id
    ats = [datetime.fromisoformat(h["at"]) for h in history]
    assert ats == sorted(ats)
    assert all(a.tzinfo is not None for a in ats)
    # Every change was announced through the outbox, in the same order.
    assert await announced(db, cid) == [(h["from_status"], h["to_status"]) for h in history[1:]]


@pytest.mark.parametrize(
    ("path", "to"),
    [
        ((), "active"),
        ((), "approved"),
        ((), "ended"),
        (("pending_review",), "active"),
        (("pending_review", "approved"), "paused"),
        (("pending_review", "approved", "active"), "draft"),
        (("pending_review", "approved", "active", "ended"), "active"),
        (("cancelled",), "draft"),
    ],
)
async def test_invalid_transition_is_409_naming_from_and_to(
    db: Database, client: httpx.AsyncClient, world: World, path: tuple[str, ...], to: str
) -> None:
    c = await create(client, world.ma)
    await walk(client, world, c["id"], *path)
    before = (await client.get(f"/api/v1/campaigns/{c['id']}", headers=world.op.headers)).json()
    r = await move(client, world.op, c["id"], to, "try")
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["type"].endswith("/invalid-transition")
    assert problem["from"] == before["status"]
    assert problem["to"] == to
    after = (await client.get(f"/api/v1/campaigns/{c['id']}", headers=world.op.headers)).json()
    assert after == before
    hist = await client.get(f"/api/v1/campaigns/{c['id']}/history", headers=world.op.headers)
    assert len(hist.json()["items"]) == len(path) + 1
    assert len(await announced(db, c["id"])) == len(path)


async def test_review_is_for_operators_and_rejection_needs_reason(
    client: httpx.AsyncClient, world: World
) -> None:
    c = await create(client, world.ma)
    await walk(client, world, c["id"], "pending_review")
    r = await move(client, world.ma, c["id"], "approved")
    assert r.status_code == 403
    r = await move(client, world.op, c["id"], "rejected", "  ")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "reason"
    r = await move(client, world.op, c["id"], "rejected", "image caption has a banned word")
    assert r.status_code == 200


async def test_cannot_activate_after_window_closed(client: httpx.AsyncClient, world: World) -> None:
    now = datetime.now(UTC)
    c = await create(
        client,
        world.ma,
        starts_at=(now - timedelta(days=2)).isoformat(),
        ends_at=(now + timedelta(seconds=1)).isoformat(),
    )
    await walk(client, world, c["id"], "pending_review", "approved")
    await asyncio.sleep(1.1)
    r = await move(client, world.ma, c["id"], "active")
    assert r.status_code == 409
    assert r.json()["type"].endswith("/invalid-transition")
    r = await move(client, world.ma, c["id"], "cancelled")
    assert r.status_code == 200


async def test_transition_with_stale_version_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    c = await create(client, world.ma)
    r = await client.post(
        f"/api/v1/campaigns/{c['id']}/transitions",
        json={"to": "pending_review", "version": 7},
        headers=world.ma.headers,
    )
    assert r.status_code == 409
    assert r.json()["type"].endswith("/campaign-version-conflict")
    r = await client.post(
        f"/api/v1/campaigns/{c['id']}/transitions",
        json={"to": "pending_review", "version": 1},
        headers=world.ma.headers,
    )
    assert r.status_code == 200


async def test_concurrent_reviews_only_one_wins(
    db: Database, client: httpx.AsyncClient, world: World
) -> None:
    for _ in range(3):
        c = await create(client, world.ma)
        await walk(client, world, c["id"], "pending_review")
        _, _, transitions_before = await counts(db)
        decisions = ["approved", "rejected"] * 5
        # Each decision is on the version the reviewer read (a rejection can be overridden
        # later, but not by a decision made on what the reviewer saw before it).
        results = await asyncio.gather(
            *(
                client.post(
                    f"/api/v1/campaigns/{c['id']}/transitions",
                    json={"to": to, "reason": f"decision {i}", "version": 2},
                    headers=world.op.headers,
                )
                for i, to in enumerate(decisions)
            )
        )
        codes = sorted(r.status_code for r in results)
        assert codes == [200] + [409] * 9, [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()
        assert winner["status"] in ("approved", "rejected")
        for r in results:
            if r.status_code == 409:
                conflict = ("/invalid-transition", "/campaign-version-conflict")
                assert r.json()["type"].endswith(conflict)
        final = (await client.get(f"/api/v1/campaigns/{c['id']}", headers=world.op.headers)).json()
        assert final["status"] == winner["status"]
        assert final["version"] == 3
        _, _, transitions_after = await counts(db)
        assert transitions_after == transitions_before + 1
        assert await announced(db, c["id"]) == [
            ("draft", "pending_review"),
            ("pending_review", winner["status"]),
        ]


async def test_concurrent_pause_and_end_one_wins(client: httpx.AsyncClient, world: World) -> None:
    c = await create(client, world.ma)
    await walk(client, world, c["id"], "pending_review", "approved", "active")
    results = await asyncio.gather(
        *(move(client, world.ma, c["id"], to) for to in ["paused", "ended"] * 5)
    )
    ok = [r for r in results if r.status_code == 200]
    # "paused" then "ended" is a legal sequence, so one or two may win, never more, never a dup.
    tos = [r.json()["status"] for r in ok]
    assert len(tos) == len(set(tos))
    assert all(r.status_code in (200, 409) for r in results)
    hist = await client.get(f"/api/v1/campaigns/{c['id']}/history", headers=world.ma.headers)
    assert len(hist.json()["items"]) == 4 + len(ok)
