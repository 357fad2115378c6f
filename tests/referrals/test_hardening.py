"""Acceptance after part 1's review: passing rejections are checked again, a referrer blocked
or moved since the invite is refused, a referee already referred is told so before
"existing account", invites per referrer per day have a ceiling, client addresses are counted
per IPv6 /64 and not at all when unknown, and the winner query uses the partial index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from incentive.auth.models import User
from incentive.db import Database, utcnow
from incentive.referrals.accept import winner_statement
from incentive.referrals.models import Referral, ReferralCount
from tests.campaigns.conftest import World
from tests.referrals.conftest import (
    H,
    accept,
    accepted,
    count,
    customer,
    invite,
    invited,
    referral_campaign,
    set_config,
)


async def yesterday(db: Database, prefix: str) -> None:
    """Move the counters of ``prefix`` subjects into the past (the next day, or hour, came)."""
    async with db.unit_of_work() as s:
        await s.execute(
            update(ReferralCount)
            .where(ReferralCount.subject.startswith(prefix), ReferralCount.period != "all")
            .values(period="2000-01-01")
        )


async def test_a_cap_rejection_is_checked_again_the_next_day(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(
        client, world, max_referrals_per_user=100, max_referrals_per_day=1
    )
    first = (await invited(client, world.cust, campaign["id"]))["token"]
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    assert (await accepted(client, await customer(db, app), first))["state"] == "accepted"
    late = await customer(db, app, "late")
    body = await accepted(client, late, token)
    assert (body["state"], body["reason"]) == ("rejected", "referrer-cap")
    again = await accepted(client, late, token)  # the same day: the cap still holds
    assert (again["id"], again["reason"]) == (body["id"], "referrer-cap")
    await yesterday(db, "referrer:")
    taken = await accepted(client, late, token)
    assert (taken["id"], taken["state"], taken["reason"]) == (body["id"], "accepted", None)
    assert await count(db, Referral, referee_id=late.user.id) == 1
    async with db.unit_of_work() as s:
        row = await s.scalar(select(Referral).where(Referral.id == body["id"]))
        assert row is not None
        assert row.business_due_at is not None


async def test_an_address_burst_is_checked_again_and_a_final_reason_is_not(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    await set_config(db, app, "referrals.max_referees_per_address_hour", 1)
    campaign = await referral_campaign(client, world, max_referrals_per_user=100)
    first = (await invited(client, world.cust, campaign["id"]))["token"]
    assert (await accepted(client, await customer(db, app), first))["state"] == "accepted"
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    burst = await customer(db, app)
    body = await accepted(client, burst, token)
    assert (body["state"], body["reason"]) == ("rejected", "address-burst")
    await yesterday(db, "address:")
    assert (await accepted(client, burst, token))["state"] == "accepted"
    # existing-account is final: accepting again answers the stored row, checked no more.
    old = await customer(db, app, "old")
    later = (await invited(client, world.cust, campaign["id"]))["token"]
    body = await accepted(client, old, later)
    assert body["reason"] == "existing-account"
    async with db.unit_of_work() as s:
        await s.execute(update(User).where(User.id == old.user.id).values(created_at=utcnow()))
    assert (await accepted(client, old, later))["reason"] == "existing-account"


async def test_taking_a_rejection_again_under_concurrency_keeps_one_referrer(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    await set_config(db, app, "referrals.max_referees_per_address_hour", 1)
    campaign = await referral_campaign(client, world, max_referrals_per_user=100)
    used = (await invited(client, world.cust, campaign["id"]))["token"]
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    assert (await accepted(client, await customer(db, app), used))["state"] == "accepted"
    # The other referrers' invites are older than the referee's account, as the token's is
    # (else the referee is an existing account to them, a right answer this test is not about).
    others = [await customer(db, app) for _ in range(3)]
    theirs = [(await invited(client, o, campaign["id"]))["token"] for o in others]
    referee = await customer(db, app)
    assert (await accepted(client, referee, token))["reason"] == "address-burst"
    await set_config(db, app, "referrals.max_referees_per_address_hour", 1000)
    tokens = [token] * 12 + theirs
    answers = await asyncio.gather(*(accept(client, referee, t) for t in tokens))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    shown = {(a.json()["state"], a.json()["reason"]) for a in answers}
    assert shown <= {("accepted", None), ("rejected", "already-referred")}, shown
    async with db.unit_of_work() as s:
        rows = list(await s.scalars(select(Referral).where(Referral.referee_id == referee.user.id)))
        counted = await s.scalars(
            select(ReferralCount.n).where(
                ReferralCount.subject.startswith("referrer:"), ReferralCount.period == "all"
            )
        )
        referrers = sum(counted)
    assert [(r.state, r.reason) for r in rows if r.state == "accepted"] == [("accepted", None)]
    # The first acceptance and the one winner counted against their referrers; no loser did.
    assert referrers == 2


async def test_a_referrer_blocked_or_moved_since_the_invite_is_refused(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    referee = await customer(db, app)
    for change in ({"blocked": True}, {"role": "operator"}):
        async with db.unit_of_work() as s:
            await s.execute(update(User).where(User.id == world.cust.user.id).values(**change))
        body = await accepted(client, referee, token)
        assert (body["state"], body["reason"]) == ("rejected", "referrer-ineligible")
        async with db.unit_of_work() as s:
            await s.execute(
                update(User)
                .where(User.id == world.cust.user.id)
                .values(blocked=False, role="customer")
            )
    # Unblocked: the invite works again (a passing reason).
    assert (await accepted(client, referee, token))["state"] == "accepted"


async def test_already_referred_is_told_before_existing_account(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    campaign = await referral_campaign(client, world)
    first = (await invited(client, world.cust, campaign["id"]))["token"]
    referee = await customer(db, app)
    assert (await accepted(client, referee, first))["state"] == "accepted"
    # An invite made after the referee's account: both reasons apply, already-referred wins.
    other = await customer(db, app)
    late = (await invited(client, other, campaign["id"]))["token"]
    body = await accepted(client, referee, late)
    assert (body["state"], body["reason"]) == ("rejected", "already-referred")
    # Without a winner, an older account still reads existing-account.
    old = await customer(db, app, "older")
    later = (await invited(client, other, campaign["id"]))["token"]
    assert (await accepted(client, old, later))["reason"] == "existing-account"


async def test_invites_per_referrer_per_day_have_a_ceiling_under_concurrency(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    await set_config(db, app, "referrals.max_invites_per_referrer_day", 5)
    campaign = await referral_campaign(client, world)
    answers = await asyncio.gather(*(invite(client, world.cust, campaign["id"]) for _ in range(20)))
    made = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert len(made) == 5, [a.text for a in answers]
    assert {(a.status_code, a.json()["reason"], a.json()["rule"]) for a in refused} == {
        (403, "invite-cap", "referrals.max_invites_per_referrer_day")
    }
    mine = await client.get(f"{H}/me/invites?limit=100", headers=world.cust.headers)
    assert len(mine.json()["items"]) == 5
    # Another campaign, or another referrer, has its own ceiling.
    elsewhere = await referral_campaign(client, world)
    assert (await invite(client, world.cust, elsewhere["id"])).status_code == 201
    assert (await invite(client, await customer(db, app), campaign["id"])).status_code == 201


@asynccontextmanager
async def from_address(app: Any, address: str | None) -> AsyncIterator[httpx.AsyncClient]:
    client = None if address is None else (address, 40000)
    transport = httpx.ASGITransport(app=app, client=client)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_ipv6_clients_are_counted_per_64_and_unknown_ones_not_at_all(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    await set_config(db, app, "referrals.max_referees_per_address_hour", 1)
    campaign = await referral_campaign(client, world, max_referrals_per_user=100)

    async def from_(address: str | None) -> tuple[str, str | None]:
        token = (await invited(client, world.cust, campaign["id"]))["token"]
        referee = await customer(db, app)
        async with from_address(app, address) as c:
            body = await accepted(c, referee, token)
        return body["state"], body["reason"]

    assert await from_("2001:db8:1:2::1") == ("accepted", None)
    # Another address of the same /64 is the same subscriber.
    assert await from_("2001:db8:1:2:ffff:ffff:ffff:ffff") == ("rejected", "address-burst")
    assert await from_("2001:db8:1:3::1") == ("accepted", None)
    # No client address: the check is skipped, not one bucket shared by everyone.
    assert [await from_(None) for _ in range(3)] == [("accepted", None)] * 3
    async with db.unit_of_work() as s:
        addresses = list(
            await s.scalars(
                select(ReferralCount.subject).where(ReferralCount.subject.startswith("address:"))
            )
        )
        stored = list(await s.scalars(select(Referral.address_hash)))
    assert len(addresses) == 2
    assert stored.count(None) == 3


async def _plan(db: Database, statement: Any) -> str:
    """The plan of ``statement`` as a prepared statement runs it: on PostgreSQL a generic plan
    (parameters unknown), sequential scans discouraged so that a usable index is chosen."""
    async with db.unit_of_work() as s:
        conn = await s.connection()
        compiled = statement.compile(dialect=conn.dialect)
        args = tuple(compiled.params[name] for name in compiled.positiontup)
        if conn.dialect.name != "postgresql":
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)
            return "\n".join(str(r[-1]) for r in rows)
        await conn.exec_driver_sql(f"PREPARE winner_probe AS {compiled}")
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        values = ", ".join(f"'{a}'" for a in args)
        rows = await conn.exec_driver_sql(f"EXPLAIN EXECUTE winner_probe({values})")
        plan = "\n".join(str(r[0]) for r in rows)
        await conn.exec_driver_sql("DEALLOCATE winner_probe")
        return plan


async def test_the_winner_query_uses_the_partial_unique_index(db: Database) -> None:
    plan = await _plan(db, winner_statement("c" * 32, "r" * 32))
    assert "uq_referrals_campaign_referee" in plan, plan


@pytest.mark.usefixtures("app")
async def test_the_public_invite_page_reads_outside_a_write(
    client: httpx.AsyncClient, world: World, db: Database, app: Any
) -> None:
    """``GET /i/{token}`` answers while a write transaction holds the database (SQLite's
    write lock; on PostgreSQL a writer never blocks a reader anyway)."""
    campaign = await referral_campaign(client, world)
    token = (await invited(client, world.cust, campaign["id"]))["token"]
    async with db.unit_of_work() as s:
        await s.execute(update(User).where(User.id == world.cust.user.id).values(blocked=False))
        r = await asyncio.wait_for(client.get(f"/i/{token}"), timeout=3)
    assert r.status_code == 200, r.text
    assert r.json()["token"] == token
