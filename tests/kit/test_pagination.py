"""Every list pages the same way (``limit``, opaque ``cursor``, ``{items, next_cursor}``): paging
through many rows returns each exactly once, in the documented order, whatever the page size;
rows sharing a timestamp are not skipped or repeated; a cursor that is not one of ours is a 422
naming ``cursor``."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from incentive.auth.models import Partner
from incentive.campaigns.models import Campaign
from incentive.config.registry import registered_keys
from incentive.db import Database
from incentive.join_codes.models import CampaignMerchant
from incentive.ledger import service as ledger
from incentive.points_files.models import PointsFile
from tests.campaigns.conftest import assisted_review, campaign_body
from tests.factories import Actor, make_merchant, make_user

ROWS = 7  # with page sizes 1, 2, 3 and 7: full pages, a short last page, an exact fit
TIED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


BAD_CURSORS = [
    "not base64 !",  # breaks the query pattern
    "bm9wZQ",  # base64 of "nope": not JSON
    _cursor([]),  # no key
    _cursor(["x" * 32, "y"]),  # wrong types
    _cursor([2**70]),  # beyond BIGINT: must not reach PostgreSQL
    _cursor(["2026-01-01T00:00:00", "0" * 32]),  # a naive timestamp
    _cursor(["2026-01-01T00:00:00+00:00", "a\u0000b"]),  # NUL in an id
    _cursor(["0001-01-01T00:00:00+14:00", "0" * 32]),  # no UTC instant
    _cursor([{"id": 1}]),
]


@dataclass
class Lists:
    op: Actor
    owner: Actor
    staff: Actor
    accounts: list[int]  # the owner's, by id
    transfers: list[int]  # touching the owner's accounts, newest first
    a0_transfers: list[int]  # touching the owner's first account, newest first
    campaigns: list[str]  # merchant's, newest first (all created at one instant)
    campaign_id: str
    transitions: list[int]  # of campaign_id, oldest first
    audit: list[int]  # versions of flash_sale.buckets, newest first
    files: list[str]  # newest first, four sharing one timestamp
    codes: list[str]  # join codes of campaign_id, in code order
    members: list[str]  # merchants that joined campaign_id, all at one instant: by id


async def _lists(db: Database, app: Any, client: httpx.AsyncClient) -> Lists:
    await assisted_review(db, app)  # submissions wait for a person: history moves back and forth
    op = await make_user(db, app, username="pager-op", role="operator")
    owner = await make_user(db, app, username="pager")
    other = await make_user(db, app, username="other")
    merchant = await make_merchant(db, code="PAGER")
    staff = await make_user(
        db, app, username="pager-staff", role="merchant", merchant_id=merchant.id
    )

    async with db.unit_of_work() as s:
        source = await ledger.open_account(
            s, owner_type="user", owner_id=op.user.id, asset="POINTS", allow_negative=True
        )
        accounts = [
            (
                await ledger.open_account(
                    s, owner_type="user", owner_id=owner.user.id, asset="POINTS", name=f"a{i}"
                )
            ).id
            for i in range(ROWS)
        ]
        elsewhere = await ledger.open_account(
            s, owner_type="user", owner_id=other.user.id, asset="POINTS"
        )
        moves = [(source.id, accounts[0])] * ROWS + [(source.id, a) for a in accounts[1:3]]
        moves += [(accounts[0], accounts[1]), (source.id, elsewhere.id)]
        ids = []
        for n, (debit, credit) in enumerate(moves):
            t = await ledger.transfer(
                s,
                idempotency_key=f"pager:{n}",
                debit_account_id=debit,
                credit_account_id=credit,
                amount=1,
                kind="grant",
            )
            ids.append((t.id, debit, credit))
    mine = set(accounts)
    transfers = sorted((i for i, d, c in ids if d in mine or c in mine), reverse=True)
    a0 = sorted((i for i, d, c in ids if accounts[0] in (d, c)), reverse=True)

    campaigns = []
    for n in range(ROWS):
        r = await client.post(
            "/api/v1/campaigns", json=campaign_body(name=f"pager {n}"), headers=staff.headers
        )
        assert r.status_code == 201, r.text
        campaigns.append(r.json()["id"])
    async with db.unit_of_work() as s:  # one instant for all: the id breaks the tie
        await s.execute(update(Campaign).values(created_at=TIED_AT))
    campaign_id = campaigns[0]
    for to in ["pending_review", "draft"] * 3:
        r = await client.post(
            f"/api/v1/campaigns/{campaign_id}/transitions",
            json={"to": to, "reason": "paging"},
            headers=staff.headers,
        )
        assert r.status_code == 200, r.text
    history = await client.get(
        f"/api/v1/campaigns/{campaign_id}/history?limit=200", headers=staff.headers
    )
    transitions = [t["id"] for t in history.json()["items"]]
    assert len(transitions) == ROWS

    for value in (2, 4, 8, 16, 2, 4, 8):
        r = await client.put(
            "/api/v1/config/flash_sale.buckets", json={"value": value}, headers=op.headers
        )
        assert r.status_code == 200, r.text

    async with db.unit_of_work() as s:
        partner = Partner(code="pager", name="Pager")
        s.add(partner)
        await s.flush()
        rows = [
            PointsFile(
                partner_id=partner.id,
                name=f"POINTS_pager_20260102_{n}.txt.pgp",
                base=f"POINTS_pager_20260102_{n}",
                file_seq=n,
                source="http",
                sha256=f"{n:064d}",
                state="delivered",  # a finished file: no worker touches it
                received_at=TIED_AT if n < 4 else TIED_AT.replace(second=n),
            )
            for n in range(ROWS)
        ]
        s.add_all(rows)
        await s.flush()
        files = [f.id for f in sorted(rows, key=lambda f: (f.received_at, f.id), reverse=True)]

    r = await client.post(
        f"/api/v1/campaigns/{campaign_id}/join-codes",
        json={"count": ROWS},
        headers={**op.headers, "Idempotency-Key": "pager-codes"},
    )
    assert r.status_code == 201, r.text
    codes_page = await client.get(
        f"/api/v1/campaigns/{campaign_id}/join-codes?limit=200", headers=op.headers
    )
    codes = [c["code"] for c in codes_page.json()["items"]]
    members = []
    for n, code in enumerate(codes):
        joiner = await make_merchant(db, code=f"JOIN{n}")
        joiner_staff = await make_user(
            db, app, username=f"joiner-{n}", role="merchant", merchant_id=joiner.id
        )
        r = await client.post(
            "/api/v1/join-codes/redemptions", json={"code": code}, headers=joiner_staff.headers
        )
        assert r.status_code == 201, r.text
        members.append(joiner.id)
    async with db.unit_of_work() as s:  # one instant for all: the merchant id breaks the tie
        await s.execute(update(CampaignMerchant).values(joined_at=TIED_AT))

    return Lists(
        op=op,
        owner=owner,
        staff=staff,
        accounts=accounts,
        transfers=transfers,
        a0_transfers=a0,
        campaigns=sorted(campaigns, reverse=True),
        campaign_id=campaign_id,
        transitions=transitions,
        audit=list(range(ROWS, 0, -1)),
        files=files,
        codes=sorted(codes),
        members=sorted(members),
    )


def _expected(w: Lists) -> list[tuple[str, Actor, str, list[Any]]]:
    """(url, caller, the item field that identifies a row, the rows in the documented order)."""
    return [
        ("/api/v1/me/accounts", w.owner, "id", w.accounts),
        ("/api/v1/me/transfers", w.owner, "id", w.transfers),
        (f"/api/v1/accounts/{w.accounts[0]}/transfers", w.owner, "id", w.a0_transfers),
        ("/api/v1/campaigns", w.staff, "id", w.campaigns),
        (f"/api/v1/campaigns/{w.campaign_id}/history", w.staff, "id", w.transitions),
        ("/api/v1/config", w.op, "key", sorted(k.name for k in registered_keys())),
        ("/api/v1/config/flash_sale.buckets/audit", w.op, "version", w.audit),
        ("/api/v1/points-files", w.op, "id", w.files),
        (f"/api/v1/campaigns/{w.campaign_id}/join-codes", w.op, "code", w.codes),
        (f"/api/v1/campaigns/{w.campaign_id}/merchants", w.staff, "merchant_id", w.members),
    ]


async def _walk(
    client: httpx.AsyncClient, url: str, caller: Actor, field: str, limit: int
) -> list[Any]:
    seen: list[Any] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        r = await client.get(url, params=params, headers=caller.headers)
        assert r.status_code == 200, f"{url}: {r.text}"
        page = r.json()
        assert set(page) == {"items", "next_cursor"}
        assert 1 <= len(page["items"]) <= limit or (not page["items"] and not seen)
        seen.extend(item[field] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError(f"{url} never ends")


async def test_paging_through_every_list_returns_each_row_exactly_once_in_order(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _lists(db, app, client)
    for url, caller, field, expected in _expected(w):
        assert len(expected) >= ROWS, url
        for limit in (1, 2, 3, len(expected)):
            seen = await _walk(client, url, caller, field, limit)
            assert seen == expected, f"{url} with limit={limit}"


async def test_a_cursor_that_is_not_ours_is_a_422_naming_cursor_on_every_list(
    db: Database, app: Any, client: httpx.AsyncClient
) -> None:
    w = await _lists(db, app, client)
    for url, caller, _, _ in _expected(w):
        for bad in BAD_CURSORS:
            r = await client.get(url, params={"cursor": bad}, headers=caller.headers)
            assert r.status_code == 422, f"{url} cursor={bad!r}: {r.status_code} {r.text}"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert [e["field"] for e in r.json()["errors"]] == ["cursor"], r.text


@pytest.mark.parametrize("limit", [0, 201, -1])
async def test_a_limit_out_of_range_is_a_422_naming_limit(
    db: Database, app: Any, client: httpx.AsyncClient, limit: int
) -> None:
    op = await make_user(db, app, username="limit-op", role="operator")
    r = await client.get("/api/v1/campaigns", params={"limit": limit}, headers=op.headers)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["limit"]
