"""Issue 15: submitting a campaign reviews every customer-facing text against the lists, at
once, and records the verdict; operators see the held ones and decide, with a reason, audited."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from incentive.auth.models import AuditEntry
from incentive.campaigns.models import CampaignTransition
from incentive.db import Database
from tests.campaigns.conftest import World, assisted_review, create
from tests.review.conftest import submit, verdicts, word_list


async def test_a_clean_campaign_is_approved_without_a_person(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "banned", ["发票", "casino"])
    c = await create(client, world.ma, name="Spring tea", description="Half price green tea")
    assert (await submit(client, world, c["id"]))["status"] == "approved"
    (verdict,) = await verdicts(client, world.ma, c["id"])
    assert verdict["verdict"] == "approved"
    assert verdict["automated"] is True
    assert verdict["decided_by"] == "system"
    assert verdict["hits"] == []
    assert verdict["lists"] == {"banned": 2}
    async with db.unit_of_work() as s:
        moves = (
            await s.execute(
                select(CampaignTransition.to_status, CampaignTransition.actor).where(
                    CampaignTransition.campaign_id == c["id"]
                )
            )
        ).all()
    assert [tuple(m) for m in moves] == [
        ("draft", world.ma.user.id),
        ("pending_review", world.ma.user.id),
        ("approved", "system"),
    ]


async def test_a_hit_on_a_reject_list_rejects_with_every_hit_recorded(
    app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "banned", ["发票", "casino"])
    c = await create(client, world.ma, name="Casino night", description="代开发票, 请联系 · 发-票")
    body = await submit(client, world, c["id"])
    assert body["status"] == "rejected"
    (verdict,) = await verdicts(client, world.ma, c["id"])
    assert verdict["verdict"] == "rejected"
    hits = [
        (h["field"], h["offset"], h["length"], h["matched"], h["word"]) for h in verdict["hits"]
    ]
    assert hits == [
        ("name", 0, 6, "Casino", "casino"),
        ("description", 2, 2, "发票", "发票"),
        ("description", 12, 3, "发-票", "发票"),
    ]
    assert {(h["list"], h["list_version"], h["severity"]) for h in verdict["hits"]} == {
        ("banned", 2, "reject")
    }
    history = await client.get(f"/api/v1/campaigns/{c['id']}/history", headers=world.ma.headers)
    last = history.json()["items"][-1]
    assert (last["to_status"], last["actor"]) == ("rejected", "system")
    assert "'Casino' in name (banned)" in last["reason"]


@pytest.mark.parametrize(
    ("text", "matched"),
    [
        ("ＣＡＳＩＮＯ tonight", "ＣＡＳＩＮＯ"),  # full-width
        ("CaSiNo tonight", "CaSiNo"),  # mixed case
        ("c.a.s.i.n.o tonight", "c.a.s.i.n.o"),  # symbols between the letters
        ("c a s i n o tonight", "c a s i n o"),  # spaces between the letters
        ("免费开發票", "發票"),  # traditional script
        ("发 * 票", "发 * 票"),  # symbols and spaces between ideographs
    ],
)
async def test_evasions_are_caught(
    app: Any, client: httpx.AsyncClient, world: World, text: str, matched: str
) -> None:
    await word_list(client, app, world.op, "banned", ["发票", "casino"])
    c = await create(client, world.ma, description=text)
    assert (await submit(client, world, c["id"]))["status"] == "rejected"
    (verdict,) = await verdicts(client, world.ma, c["id"])
    assert [h["matched"] for h in verdict["hits"]] == [matched]
    hit = verdict["hits"][0]
    assert text[hit["offset"] : hit["offset"] + hit["length"]] == matched


async def _audits(db: Database, campaign_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    async with db.unit_of_work() as s:
        rows = (
            await s.execute(
                select(AuditEntry.action, AuditEntry.actor_id, AuditEntry.detail)
                .where(AuditEntry.target == campaign_id)
                .order_by(AuditEntry.id)
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_a_hold_list_hit_waits_in_the_queue_and_an_override_needs_a_reason(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "watch", ["lottery"], severity="hold")
    c = await create(client, world.ma, description="Win the lottery")
    clean = await create(client, world.ma, description="Tea")
    assert (await submit(client, world, c["id"]))["status"] == "pending_review"
    assert (await submit(client, world, clean["id"]))["status"] == "approved"
    queue = await client.get("/api/v1/review/queue", headers=world.op.headers)
    assert queue.status_code == 200
    (held,) = queue.json()["items"]
    assert (held["campaign_id"], held["verdict"]) == (c["id"], "held")
    assert [(h["field"], h["matched"], h["severity"]) for h in held["hits"]] == [
        ("description", "lottery", "hold")
    ]
    # merchants neither see the queue nor decide
    assert (await client.get("/api/v1/review/queue", headers=world.ma.headers)).status_code == 403
    url = f"/api/v1/campaigns/{c['id']}/review/decision"
    r = await client.post(
        url, json={"decision": "approve", "reason": "x"}, headers=world.ma.headers
    )
    assert r.status_code == 403
    # approving over hits without a reason: the plain transition is refused, naming the field
    r = await client.post(
        f"/api/v1/campaigns/{c['id']}/transitions",
        json={"to": "approved"},
        headers=world.op.headers,
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "reason"
    assert await _audits(db, c["id"]) == []
    r = await client.post(
        url,
        json={"decision": "approve", "reason": "a lottery licence is on file"},
        headers=world.op.headers,
    )
    assert r.status_code == 200, r.text
    decided = r.json()
    assert (decided["verdict"], decided["automated"], decided["decided_by"]) == (
        "approved",
        False,
        world.op.user.id,
    )
    assert decided["reason"] == "a lottery licence is on file"
    assert [h["matched"] for h in decided["hits"]] == ["lottery"]
    campaign = await client.get(f"/api/v1/campaigns/{c['id']}", headers=world.ma.headers)
    assert campaign.json()["status"] == "approved"
    ((action, actor, detail),) = await _audits(db, c["id"])
    assert (action, actor) == ("review.override", world.op.user.id)
    assert detail["overrides"] == held["id"]
    assert (await client.get("/api/v1/review/queue", headers=world.op.headers)).json()[
        "items"
    ] == []


async def test_an_automated_rejection_is_overridden_only_as_it_was_judged(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "banned", ["casino"])
    wrong = await create(client, world.ma, description="Casino Royale screening (a film)")
    edited = await create(client, world.ma, description="casino")
    for c in (wrong, edited):
        assert (await submit(client, world, c["id"]))["status"] == "rejected"
    decide = "/api/v1/campaigns/{}/review/decision"
    r = await client.post(
        decide.format(wrong["id"]),
        json={"decision": "approve", "reason": "a film title"},
        headers=world.op.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "approved"
    assert (await _audits(db, wrong["id"]))[0][0] == "review.override"
    # edited after the rejection: the verdict judged another text; submit it again instead
    r = await client.patch(
        f"/api/v1/campaigns/{edited['id']}", json={"description": "cards"}, headers=world.ma.headers
    )
    assert r.status_code == 200
    r = await client.post(
        decide.format(edited["id"]),
        json={"decision": "approve", "reason": "fine now"},
        headers=world.op.headers,
    )
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/review-conflict")
    status = await client.get(f"/api/v1/campaigns/{edited['id']}", headers=world.op.headers)
    assert status.json()["status"] == "rejected"
    assert await _audits(db, edited["id"]) == []


async def test_assisted_mode_holds_even_a_clean_campaign(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await assisted_review(db, app)
    c = await create(client, world.ma, description="Tea")
    assert (await submit(client, world, c["id"]))["status"] == "pending_review"
    (verdict,) = await verdicts(client, world.op, c["id"])
    assert (verdict["verdict"], verdict["hits"]) == ("held", [])


async def test_only_the_campaigns_managers_read_its_verdicts(
    app: Any, client: httpx.AsyncClient, world: World
) -> None:
    c = await create(client, world.ma)
    await submit(client, world, c["id"])
    for actor, code in ((world.mb, 404), (world.cust, 403), (world.op, 200)):
        r = await client.get(f"/api/v1/campaigns/{c['id']}/review", headers=actor.headers)
        assert r.status_code == code, (actor.user.username, r.text)


async def test_withdrawn_or_edited_campaigns_leave_the_queue(
    db: Database, app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "watch", ["lottery"], severity="hold")
    c = await create(client, world.ma, description="lottery")
    await submit(client, world, c["id"])
    r = await client.post(
        f"/api/v1/campaigns/{c['id']}/transitions", json={"to": "draft"}, headers=world.ma.headers
    )
    assert r.status_code == 200
    queue = await client.get("/api/v1/review/queue", headers=world.op.headers)
    assert queue.json()["items"] == []


async def test_a_verdict_keeps_the_first_200_hits_and_counts_them_all(
    app: Any, client: httpx.AsyncClient, world: World
) -> None:
    await word_list(client, app, world.op, "watch", ["代购"], severity="hold")
    c = await create(client, world.ma, description="代购 " * 300)
    assert (await submit(client, world, c["id"]))["status"] == "pending_review"
    (verdict,) = await verdicts(client, world.op, c["id"])
    assert (len(verdict["hits"]), verdict["hit_count"]) == (200, 300)
    assert [h["offset"] for h in verdict["hits"][:3]] == [0, 3, 6]
    r = await client.post(
        "/api/v1/review/screenings",
        json={"texts": {"description": "代购 " * 300}},
        headers=world.op.headers,
    )
    assert (len(r.json()["hits"]), r.json()["hit_count"]) == (200, 300)


async def test_a_submission_is_screened_against_every_list_change_committed_before_it(
    db: Database, app: Any, client: httpx.AsyncClient, world: World, monkeypatch: Any
) -> None:
    """Not only within the refresher's 2 s: a word added by another process a moment before
    is caught (the submission reads the revision in its own transaction)."""
    from incentive.review import screen as review_screen
    from incentive.review import words

    async def asleep(self: Any) -> bool:  # this process's refresher sees nothing
        return False

    monkeypatch.setattr(review_screen.Screen, "refresh", asleep)
    c = await create(client, world.ma, description="casino night")
    async with db.unit_of_work() as s:  # as the CLI of another process would
        await words.create_list(s, None, "banned", "reject")
        await words.add_words(s, None, "banned", ["casino"])
    assert (await submit(client, world, c["id"]))["status"] == "rejected"
    # the process kept the matcher it built for that submission
    assert app.state.review.snapshot.versions == {"banned": 2}
