"""Generating codes: count, alphabet, randomness, prefix, uniqueness, collisions drawn
again, idempotency, bad input and roles (each refusal writes nothing)."""

from __future__ import annotations

import math
import re
from collections import Counter

import httpx
import pytest

from incentive.auth import service as auth_service
from incentive.db import Database
from incentive.join_codes import service
from tests.campaigns.conftest import World, move
from tests.join_codes.conftest import audited, codes_of, generate

CODE = re.compile(f"^[{service.ALPHABET}]{{{service.RANDOM_LENGTH}}}$")


def test_the_alphabet_has_no_look_alikes_and_codes_carry_40_bits() -> None:
    assert not set("0O1IL") & set(service.ALPHABET)
    assert len(set(service.ALPHABET)) == len(service.ALPHABET) == 31
    assert service.RANDOM_LENGTH * math.log2(len(service.ALPHABET)) >= 40
    codes = service.random_codes(20_000)
    assert len(set(codes)) == 20_000
    assert all(CODE.match(c) for c in codes)
    # Each symbol equally likely: 200,000 symbols, ~6,452 each; 5 sigma is ~390.
    counts = Counter("".join(codes))
    assert set(counts) == set(service.ALPHABET)
    expected = 200_000 / 31
    assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in counts.values()), counts


async def test_an_operator_generates_count_codes_with_a_prefix_once_per_key(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    r = await generate(client, world.op, campaign, 500, prefix="ACME", key="k1")
    assert r.status_code == 201, r.text
    assert r.json() == {
        "campaign_id": campaign,
        "count": 500,
        "prefix": "ACME",
        "export": f"/api/v1/campaigns/{campaign}/join-codes/export",
    }
    rows = await codes_of(db, campaign)
    assert len(rows) == len({r.code for r in rows}) == 500
    assert all(r.code.startswith("ACME") and CODE.match(r.code[4:]) for r in rows)
    assert {r.status for r in rows} == {"unused"}
    assert {r.created_by for r in rows} == {world.op.user.id}
    # The same key and body again: the first answer, nothing generated.
    again = await generate(client, world.op, campaign, 500, prefix="ACME", key="k1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(await codes_of(db, campaign)) == 500
    assert await audited(db, "join_codes.generate") == 1
    # Without a prefix, another batch: all 700 distinct.
    assert (await generate(client, world.op, campaign, 200)).status_code == 201
    rows = await codes_of(db, campaign)
    assert len({r.code for r in rows}) == 700
    assert sum(1 for r in rows if CODE.match(r.code)) >= 200


async def test_codes_already_taken_are_drawn_again_until_count_are_new(
    world: World, campaign: str, db: Database
) -> None:
    async with db.unit_of_work() as s:
        await service.generate(s, campaign, 5, None, None)
    taken = [r.code for r in await codes_of(db, campaign)]
    calls: list[int] = []

    def draw(n: int, prefix: str) -> list[str]:
        calls.append(n)
        if len(calls) == 1:  # three already taken, one drawn twice, n-4 new
            return [*taken[:3], "ZZZZZZZZZZ", "ZZZZZZZZZZ", *service.random_codes(n - 5)]
        return service.random_codes(n, prefix)

    async with db.unit_of_work() as s:
        done = await service.generate(s, campaign, 100, None, None, draw=draw)
    assert done.redrawn == 4
    assert calls == [100, 4]
    rows = await codes_of(db, campaign)
    assert len(rows) == 105
    assert sum(1 for r in rows if r.code == "ZZZZZZZZZZ") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 1_000_001}, "count"),
        ({"count": "many"}, "count"),
        ({}, "count"),
        ({"count": 5, "prefix": "acme"}, "prefix"),
        ({"count": 5, "prefix": "BO0K"}, "prefix"),
        ({"count": 5, "prefix": "ABCDEFGHJ"}, "prefix"),
        ({"count": 5, "prefix": ""}, "prefix"),
        ({"count": 5, "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient,
    world: World,
    campaign: str,
    db: Database,
    body: dict[str, object],
    field: str,
) -> None:
    r = await client.post(
        f"/api/v1/campaigns/{campaign}/join-codes",
        json=body,
        headers={**world.op.headers, "Idempotency-Key": "bad"},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]], r.text
    assert await codes_of(db, campaign) == []


async def test_the_service_refuses_bad_count_and_prefix_too(
    world: World, campaign: str, db: Database
) -> None:
    for count, prefix, field in ((0, None, "count"), (5, "I1", "prefix")):
        with pytest.raises(service.InvalidField) as refused:
            async with db.unit_of_work() as s:
                await service.generate(s, campaign, count, prefix, None)
        assert refused.value.field == field
    assert await codes_of(db, campaign) == []


async def test_without_the_idempotency_key_it_is_a_422_naming_the_header(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    r = await client.post(
        f"/api/v1/campaigns/{campaign}/join-codes", json={"count": 3}, headers=world.op.headers
    )
    assert r.status_code == 422
    assert [(e["in"], e["field"]) for e in r.json()["errors"]] == [("header", "Idempotency-Key")]
    assert await codes_of(db, campaign) == []


async def test_only_operators_generate(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    for actor in (world.cust, world.ma):
        r = await generate(client, actor, campaign, 3)
        assert r.status_code == 403, r.text
    async with db.unit_of_work() as s:
        _, api_key = await auth_service.create_partner(s, "acme", "Acme")
    r = await client.post(
        f"/api/v1/campaigns/{campaign}/join-codes",
        json={"count": 3},
        headers={"X-API-Key": api_key, "Idempotency-Key": "p"},
    )
    assert r.status_code == 401
    r = await client.post(
        f"/api/v1/campaigns/{campaign}/join-codes",
        json={"count": 3},
        headers={"Idempotency-Key": "anon"},
    )
    assert r.status_code == 401
    assert await codes_of(db, campaign) == []


async def test_no_codes_for_an_unknown_or_closed_campaign(
    client: httpx.AsyncClient, world: World, campaign: str, db: Database
) -> None:
    r = await generate(client, world.op, "0" * 32, 3)
    assert r.status_code == 404
    assert (await move(client, world.op, campaign, "cancelled", "no")).status_code == 200
    r = await generate(client, world.op, campaign, 3)
    assert r.status_code == 409, r.text
    assert r.json()["campaign_status"] == "cancelled"
    assert await codes_of(db, campaign) == []
