"""Referral invites with their QR code, and referral completions, over HTTP beside a single
ledger transfer in the same run: prints one JSON document.

Per database (``--databases``: PostgreSQL, + Redis when ``INCENTIVE_BENCH_REDIS_URL`` is set;
then SQLite, a file, as the secondary part), one real ``incentive serve`` (one uvicorn worker)
driven by ``wrk`` (``bench/httpbench.py``), the lines one after the other against it:

- ``transfer``: ``POST /api/v1/transfers``, one fixed body (the platform's marketing account →
  one sink account), the reference line as ``bench/coupons.py`` measures it;
- ``invite``: ``POST /api/v1/campaigns/{id}/invites`` (``Idempotency-Key``) by ``--referrers``
  customers in turn on one active platform referral campaign: a new invite (token, link, QR
  link) each;
- ``invite_qr_png`` / ``invite_qr_svg``: the same, each acknowledged invite followed on the
  same wrk thread by a ``GET`` of the QR link its answer gives (``?format=png`` or ``svg``):
  ``pairs_per_s`` (half the requests answered per second) is invites made with their QR code
  per second, ``server_cpu_ms_per_pair`` the server's CPU for one invite and its QR code;
- ``completion``: ``POST /api/v1/activities`` by an operator, each request the qualifying
  ``payment`` (``amount_fen`` = ``business.min_amount_fen``, at merchant A, now) of a
  different referee whose referral was accepted beforehand, so each completes one referral and
  pays its referrer ``REWARD_POINTS`` from the campaign's POINTS budget.

Set-up, outside the timed part: the referrers and the referees are written straight into
``users`` (the referees after the invites, so they are new accounts), and each referee accepts
one referrer's invite: the first ``HTTP_ACCEPTANCES`` with
``POST /api/v1/invites/{token}/acceptance``, the rest through ``referrals.accept.accept``
in-process (the function that route and sign-up call; units of work of ``ACCEPT_PER_UNIT``).
As many referees as twice what the transfer line's rate would complete in the warm-up, then
as twice the warm-up's (or the transfer's) rate would in the measured run, so no referee pays
twice (``bodies_reused`` 0).

After the run, ``--repeats`` referees pay a second time (they must get nothing more), then the
checks from the database and the API: every acknowledged completion's referral ``rewarded``
exactly once, one budget transfer per rewarded referral, each referrer's POINTS balance equal to
``REWARD_POINTS`` x their rewarded referrals (and the count the referrer's
``GET /api/v1/me/referrals`` shows, for a few of them), the campaign's report
(``GET /api/v1/campaigns/{id}/referrals/report``) agreeing, the budget never below zero, every
POINTS and CNY balance summing to zero.

Usage: python bench/referrals.py [--databases postgresql,sqlite] [--seconds 4]
(``INCENTIVE_BENCH_DATABASE_URL``: the PostgreSQL database, created and dropped here, default
postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_referrals.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from httpbench import Server, merchant_world, run_facts, users
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from incentive import domains, migrations
from incentive.activities.models import ActivityOutcome
from incentive.db import Database, utcnow
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger import service as ledger
from incentive.ledger.models import Account, Transfer
from incentive.referrals import accept
from incentive.referrals.models import Referral, ReferralInvite

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_referrals"
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL")
REWARD_POINTS = 100
MIN_AMOUNT_FEN = 1000
WARM_UP_SECONDS = 2
ACCEPT_PER_UNIT = 250
API_CHECKED_REFERRERS = 3
HTTP_ACCEPTANCES = 64
#: the campaign's budget pays this many referrals (never reached by a run)
BUDGET_REFERRALS = 1_000_000
#: referees one address may bring per hour (the HTTP acceptances all come from loopback)
ADDRESS_CAP = 1_000_000


def _auth(token: str, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **({"Idempotency-Key": key} if key else {})}


async def _world(db: Database, data_dir: Path, referrers: int) -> dict[str, Any]:
    """Merchant A, an operator, the marketing and sink accounts (``merchant_world``), a
    platform POINTS account that funds the campaign, and the referrers (customers)."""
    world = await merchant_world(db, data_dir, "referral")
    async with db.unit_of_work() as s:
        points = await ledger.open_account(
            s,
            owner_type="platform",
            owner_id="referral-points",
            asset="POINTS",
            allow_negative=True,
        )
        world["points"] = points.id
    world["referrers"] = await users(db, data_dir / "keys", referrers, prefix="referrer")
    return world


async def _campaign(base: str, world: dict[str, Any], budget: int) -> dict[str, Any]:
    """An active platform referral campaign: the referrer paid ``REWARD_POINTS`` when the
    referee pays at least ``MIN_AMOUNT_FEN`` within 30 days, no hold, no cap reached; its
    POINTS budget funded with ``budget``."""
    now = datetime.now(UTC)
    rules = {
        "task_title": "Bring a friend",
        "referrer_reward_points": REWARD_POINTS,
        "max_referrals_per_user": 10**9,
        "business": {
            "activity_type": "payment",
            "min_amount_fen": MIN_AMOUNT_FEN,
            "within_days": 30,
        },
        "hold_days": 0,
        "attribution_days": 30,
    }
    op = world["operator"]
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.post(
            "/api/v1/campaigns",
            headers=_auth(op),
            json={
                "kind": "referral",
                "name": "bench referrals",
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(days=30)).isoformat(),
                "rules": rules,
            },
        )
        r.raise_for_status()
        campaign: dict[str, Any] = r.json()
        # the automated review approves a clean campaign at submission
        for to in ("pending_review", "active"):
            r = await client.post(
                f"/api/v1/campaigns/{campaign['id']}/transitions",
                headers=_auth(op),
                json={"to": to, "reason": "bench"},
            )
            r.raise_for_status()
        # applied by the server within a couple of seconds: long before the acceptances
        r = await client.put(
            "/api/v1/config/referrals.max_referees_per_address_hour",
            headers=_auth(op),
            json={"value": ADDRESS_CAP},
        )
        r.raise_for_status()
        r = await client.post(
            f"/api/v1/campaigns/{campaign['id']}/budget",
            headers=_auth(op, "bench-fund"),
            json={"amount": budget, "from_account_id": world["points"]},
        )
        r.raise_for_status()
    return campaign


async def _invites(db: Database, campaign_id: str) -> dict[str, str]:
    """One invite token per referrer (their first)."""
    async with db.unit_of_work() as s:
        rows = await s.execute(
            select(ReferralInvite.referrer_id, func.min(ReferralInvite.token))
            .where(ReferralInvite.campaign_id == campaign_id)
            .group_by(ReferralInvite.referrer_id)
        )
        return {str(referrer): str(token) for referrer, token in rows.all()}


async def _accepted(
    db: Database, base: str, data_dir: Path, tokens: list[str], n: int, prefix: str, http: bool
) -> tuple[list[str], dict[str, Any]]:
    """``n`` new customers, each accepting the next invite of ``tokens`` in turn: with
    ``http`` the first ``HTTP_ACCEPTANCES`` with ``POST /api/v1/invites/{token}/acceptance``,
    the others through ``referrals.accept.accept`` in-process (the function that route calls;
    faster here); all must be accepted. Their ids, and how many each way how fast."""
    joined = utcnow()  # a new account: made after every invite (at most this early)
    made = await users(db, data_dir / "keys", n, prefix=prefix)
    referees = [uid for uid, _ in made]
    invite_of = [tokens[i % len(tokens)] for i in range(n)]
    refused: list[str] = []
    over_http = min(HTTP_ACCEPTANCES, n) if http else 0
    gate = asyncio.Semaphore(8)

    async def by_http(client: httpx.AsyncClient, i: int) -> None:
        async with gate:
            r = await client.post(
                f"/api/v1/invites/{invite_of[i]}/acceptance", json={}, headers=_auth(made[i][1])
            )
        if r.status_code != 200 or r.json()["state"] != "accepted":
            refused.append(f"{referees[i]}: {r.status_code} {r.text[:200]}")

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(by_http(client, i) for i in range(over_http)))
    http_s = time.perf_counter() - started

    # Lanes of their own referrers each (no two hold the same referrer's counter rows).
    lanes = 1 if db.is_sqlite else 4

    async def lane(k: int) -> None:
        mine = [i for i in range(over_http, n) if i % len(tokens) % lanes == k]
        for first in range(0, len(mine), ACCEPT_PER_UNIT):
            async with db.unit_of_work() as s:
                for i in mine[first : first + ACCEPT_PER_UNIT]:
                    row = await accept.accept(s, invite_of[i], referees[i], joined, "acceptance")
                    if row.state != "accepted":
                        refused.append(f"{referees[i]}: {row.state} {row.reason}")

    started = time.perf_counter()
    await asyncio.gather(*(lane(k) for k in range(lanes)))
    service_s = time.perf_counter() - started
    if refused:
        raise RuntimeError(f"{len(refused)} acceptances not accepted, e.g. {refused[:3]}")
    return referees, {
        "accepted": n,
        "over_http": over_http,
        "per_s_over_http": round(over_http / http_s) if over_http else None,
        "by_service": n - over_http,
        "service_s": service_s,
    }


def _payment(merchant: str, referee: str) -> str:
    return json.dumps(
        {
            "id": "@SEQ@",
            "type": "payment",
            "occurred_at": datetime.now(UTC).isoformat(),
            "customer": referee,
            "merchant": merchant,
            "amount_fen": MIN_AMOUNT_FEN,
        }
    )


async def _repeat_payments(
    base: str, world: dict[str, Any], campaign_id: str, referees: list[str]
) -> dict[str, int]:
    """A second qualifying payment by each of ``referees`` (already rewarded): the outcomes."""
    statuses: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for n, referee in enumerate(referees):
            body = json.loads(_payment(world["merchant"], referee))
            body["id"] = f"repeat-{n}"
            r = await client.post("/api/v1/activities", json=body, headers=_auth(world["operator"]))
            if r.status_code >= 300:
                statuses[f"http_{r.status_code}"] += 1
                continue
            mine = [o for o in r.json().get("outcomes", []) if o["campaign_id"] == campaign_id]
            statuses[mine[0]["status"] if mine else "no-outcome"] += 1
    return dict(statuses)


async def _api_rewarded(base: str, token: str) -> int:
    """How many of the referrer's referrals ``GET /api/v1/me/referrals`` shows rewarded."""
    n, cursor = 0, None
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while True:
            params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            r = await client.get("/api/v1/me/referrals", params=params, headers=_auth(token))
            r.raise_for_status()
            page = r.json()
            n += sum(1 for item in page["items"] if item["state"] == "rewarded")
            cursor = page.get("next_cursor")
            if not cursor:
                return n


async def _report(base: str, operator: str, campaign_id: str) -> dict[str, Any]:
    """The campaign's report as an operator reads it (``…/referrals/report``)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.get(
            f"/api/v1/campaigns/{campaign_id}/referrals/report", headers=_auth(operator)
        )
        r.raise_for_status()
        found: dict[str, Any] = r.json()
        return found


def _report_agrees(report: dict[str, Any], outcome: dict[str, Any]) -> bool:
    """The report's referrals, paid referrer rewards and budget left are the database's."""
    paid = [
        line
        for line in report["rewards"]
        if (line["side"], line["level"], line["state"]) == ("referrer", 1, "paid")
    ]
    rewarded = outcome["referrals_by_state"].get("rewarded", 0)
    return (
        report["referrals"] == outcome["referrals_by_state"]
        and report["budget_left"] == outcome["budget_left_points"]
        and sum(line["count"] for line in paid) == rewarded
        and sum(line["amount"] for line in paid) == outcome["budget_paid_points"]
        and all(line["state"] == "paid" for line in report["rewards"])
    )


async def _outcome(db: Database, campaign: dict[str, Any], funded: int) -> dict[str, Any]:
    cid, budget_id = campaign["id"], campaign["budget_account_id"]
    async with db.unit_of_work() as s:

        async def pairs(stmt: Any) -> dict[str, int]:
            return {str(k): int(v or 0) for k, v in (await s.execute(stmt)).all()}

        states = await pairs(
            select(Referral.state, func.count())
            .where(Referral.campaign_id == cid)
            .group_by(Referral.state)
        )
        outcomes = await pairs(
            select(ActivityOutcome.status, func.count())
            .where(ActivityOutcome.campaign_id == cid)
            .group_by(ActivityOutcome.status)
        )
        paid = (
            await s.execute(
                select(func.count(), func.coalesce(func.sum(Transfer.amount), 0)).where(
                    Transfer.debit_account_id == budget_id
                )
            )
        ).one()
        per_referrer = await pairs(
            select(Referral.referrer_id, func.count())
            .where(Referral.campaign_id == cid, Referral.state == "rewarded")
            .group_by(Referral.referrer_id)
        )
        balances = await pairs(
            select(Account.owner_id, Account.balance).where(
                Account.owner_type == "user", Account.asset == "POINTS"
            )
        )
        budget = int(await s.scalar(select(Account.balance).where(Account.id == budget_id)) or 0)
        sums = await pairs(select(Account.asset, func.sum(Account.balance)).group_by(Account.asset))
    referrers = set(per_referrer) | set(balances)
    wrong = [r for r in referrers if balances.get(r, 0) != REWARD_POINTS * per_referrer.get(r, 0)]
    return {
        "referrals_by_state": states,
        "outcomes_by_status": outcomes,
        "budget_transfers": int(paid[0]),
        "budget_paid_points": int(paid[1]),
        "budget_funded_points": funded,
        "budget_left_points": budget,
        "referrers_rewarded": len(per_referrer),
        "referrers_balance_not_their_rewards": len(wrong),
        "rewarded_per_referrer": per_referrer,
        "balances_sum_by_asset": sums,
    }


def _ratio(line: dict[str, Any], transfer: dict[str, Any], per: str = "rps") -> dict[str, float]:
    return {
        "by_rps": round(transfer["rps"] / max(line[per], 1), 2),
        "by_server_cpu": round(
            line[f"server_cpu_ms{'' if per == 'rps' else '_per_pair'}"]
            / max(transfer["server_cpu_ms"], 1e-9),
            2,
        ),
    }


def _pairs(run: dict[str, Any]) -> dict[str, Any]:
    """An invite-with-QR line's figures per pair (an invite and its QR code served): each
    invite answered is followed by one QR request, so in the steady state half the requests
    answered are invites and half QR codes (off by at most the connections in flight at the
    end: ``ok`` invites answered against ``followed_ok`` QR codes)."""
    run["pairs_per_s"] = round(run["requests"] / 2 / run["seconds"])
    run["server_cpu_ms_per_pair"] = round(2 * run["server_cpu_ms"], 3)
    return run


async def bench(
    db: Database, server: Server, data_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    seconds, concurrency, warm = args.seconds, args.concurrency, WARM_UP_SECONDS
    world = await _world(db, data_dir, args.referrers)
    referrer_tokens = [token for _, token in world["referrers"]]
    transfer_body = json.dumps(
        {
            "debit_account_id": world["marketing"],
            "credit_account_id": world["sink"],
            "amount": 7,
            "kind": "bench",
        }
    )
    post = {"method": "POST", "connections": concurrency}
    as_operator = {**post, "tokens": [world["operator"]]}

    def measure(path: str, **kwargs: Any) -> dict[str, Any]:
        # Each run starts on an idle server and ends once what it sent is served.
        figures = server.wrk(path, **kwargs)
        figures["settled_after_s"] = server.settle()
        return figures

    measure("/api/v1/transfers", seconds=warm, body=transfer_body, **as_operator)
    transfer = measure("/api/v1/transfers", seconds=seconds, body=transfer_body, **as_operator)

    funded = REWARD_POINTS * BUDGET_REFERRALS
    campaign = await _campaign(server.base, world, funded)
    invite_path = f"/api/v1/campaigns/{campaign['id']}/invites"
    as_referrers = {**post, "tokens": referrer_tokens, "body": "{}"}
    invites_warm = measure(invite_path, seconds=warm, follow="qr", **as_referrers)
    invite = measure(invite_path, seconds=seconds, **as_referrers)
    png = _pairs(
        measure(
            invite_path, seconds=seconds, follow="qr", follow_query="?format=png", **as_referrers
        )
    )
    svg = _pairs(
        measure(
            invite_path, seconds=seconds, follow="qr", follow_query="?format=svg", **as_referrers
        )
    )

    # Referees enough for twice what the warm-up's (or the transfer line's) rate would
    # complete, so none pays twice.
    tokens = list((await _invites(db, campaign["id"])).values())
    started = time.perf_counter()
    n = math.ceil(2 * transfer["rps"] * warm) + 2 * concurrency
    referees, accepted = await _accepted(db, server.base, data_dir, tokens, n, "warm", True)
    payments = [_payment(world["merchant"], r) for r in referees]
    activities = "/api/v1/activities"
    completion_warm = measure(activities, seconds=warm, bodies=payments, **as_operator)
    rate = max(transfer["rps"], completion_warm["rps"])
    n = args.referees or math.ceil(2 * rate * seconds) + 2 * concurrency
    referees, more = await _accepted(db, server.base, data_dir, tokens, n, "referee", False)
    setup_s = time.perf_counter() - started - completion_warm["seconds"]
    payments = [_payment(world["merchant"], r) for r in referees]
    completion = measure(activities, seconds=seconds, bodies=payments, **as_operator)
    completion["referees_available"] = n

    before = await _outcome(db, campaign, funded)
    rewarded_referees = await _rewarded_referees(db, campaign["id"], args.repeats)
    repeats = await _repeat_payments(server.base, world, campaign["id"], rewarded_referees)
    after = await _outcome(db, campaign, funded)
    report = await _report(server.base, world["operator"], campaign["id"])
    shown = {}
    ids = dict(world["referrers"])
    for referrer in sorted(after["rewarded_per_referrer"])[:API_CHECKED_REFERRERS]:
        shown[referrer] = (
            await _api_rewarded(server.base, ids[referrer]),
            after["rewarded_per_referrer"][referrer],
        )
    sent = completion_warm["sent"] + completion["sent"]
    acknowledged = completion_warm["ok"] + completion["ok"]
    refused = sum(
        r["conflict_409"] + r["unavailable_503"] + r["other"] for r in (completion_warm, completion)
    )
    rewarded = after["referrals_by_state"].get("rewarded", 0)
    errors = server.errors_logged()
    return {
        "server": "incentive serve, 1 uvicorn worker, "
        + ("SQLite" if db.is_sqlite else "PostgreSQL" + (" + Redis" if REDIS_URL else "")),
        "load": f"wrk -t2 -c{concurrency} -d{seconds}s each line, after a {warm} s warm-up",
        "transfer": transfer,
        "invite": invite,
        "invite_qr_png": png,
        "invite_qr_svg": svg,
        "completion": completion,
        "ratios": {
            "invite_cost_vs_transfer": _ratio(invite, transfer),
            "invite_qr_png_cost_vs_transfer": _ratio(png, transfer, "pairs_per_s"),
            "invite_qr_svg_cost_vs_transfer": _ratio(svg, transfer, "pairs_per_s"),
            "completion_cost_vs_transfer": _ratio(completion, transfer),
        },
        "setup": {
            "referrers": len(referrer_tokens),
            "invites_used": len(tokens),
            "referees_accepted": accepted["accepted"] + more["accepted"],
            "acceptances_over_http": accepted["over_http"],
            "acceptances_per_s_over_http": accepted["per_s_over_http"],
            "acceptances_per_s_through_the_service": round(
                (accepted["by_service"] + more["by_service"])
                / (accepted["service_s"] + more["service_s"])
            ),
            "setup_seconds": round(setup_s, 1),
        },
        "outcome": {
            "completions": {"acknowledged": acknowledged, "refused": refused, "sent": sent},
            "before_repeats": {k: v for k, v in before.items() if k != "rewarded_per_referrer"},
            "repeat_payments": repeats,
            "after_repeats": {k: v for k, v in after.items() if k != "rewarded_per_referrer"},
            "api_rewarded_vs_database": shown,
            "api_report": report,
        },
        "checks": {
            "no_referee_paid_twice_in_the_run": completion_warm["bodies_reused"]
            + completion["bodies_reused"]
            == 0,
            "no_completion_refused": refused == 0,
            "completions_acknowledged_all_rewarded": 0 < acknowledged <= rewarded,
            "no_reward_without_a_payment_sent": rewarded <= sent - refused,
            "one_budget_transfer_per_rewarded_referral": after["budget_transfers"] == rewarded,
            "budget_paid_reward_per_referral": after["budget_paid_points"]
            == REWARD_POINTS * rewarded,
            "budget_not_negative": after["budget_left_points"] >= 0,
            "budget_left_is_funded_less_paid": after["budget_left_points"]
            == funded - after["budget_paid_points"],
            "each_referrer_balance_is_their_rewards": after["referrers_balance_not_their_rewards"]
            == 0,
            # each repeat stored (201) and refused by the campaign, nothing more moved
            "repeat_payments_rewarded_nothing": repeats == {"refused": len(rewarded_referees)}
            and len(rewarded_referees) > 0
            and after["budget_transfers"] == before["budget_transfers"],
            "api_shows_the_rewarded_referrals": bool(shown)
            and all(a == b for a, b in shown.values()),
            "api_report_agrees": _report_agrees(report, after),
            "invites_and_qr_codes_all_served": all(
                r["conflict_409"] + r["unavailable_503"] + r["other"] == 0
                for r in (invites_warm, invite, png, svg)
            )
            and png["followed_ok"] > 0
            and svg["followed_ok"] > 0,
            "ledger_conserved": all(v == 0 for v in after["balances_sum_by_asset"].values()),
            "no_server_error_logged": errors == 0,
        },
        "server_errors_logged": errors,
    }


async def _rewarded_referees(db: Database, campaign_id: str, n: int) -> list[str]:
    async with db.unit_of_work() as s:
        rows = await s.scalars(
            select(Referral.referee_id)
            .where(Referral.campaign_id == campaign_id, Referral.state == "rewarded")
            .order_by(Referral.referee_id)
            .limit(n)
        )
        return [str(r) for r in rows]


async def run_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-referrals-"))
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{data_dir / 'bench.db'}"
    else:
        url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
        await recreate_database(url, str(make_url(url).database))
    db = Database(url)
    try:
        await migrations.upgrade(db.engine)
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": "WARNING",
        }
        if REDIS_URL and kind != "sqlite":
            env["INCENTIVE_REDIS_URL"] = REDIS_URL
        with Server(env, log=data_dir / "server.log") as server:
            return await bench(db, server, data_dir, args)
    finally:
        await db.dispose()
        if kind != "sqlite":
            await drop_database(url, str(make_url(url).database))
        shutil.rmtree(data_dir, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--databases", default="postgresql,sqlite", help="in this order")
    parser.add_argument("--seconds", type=int, default=4, help="each measured wrk run")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--referrers", type=int, default=100, help="inviting customers")
    parser.add_argument(
        "--referees", type=int, default=0, help="referees for the measured run (0: sized)"
    )
    parser.add_argument("--repeats", type=int, default=50, help="second payments after it")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (apt-get install wrk)")
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]
    if unknown := sorted(set(kinds) - {"postgresql", "sqlite"}):
        parser.error(f"unknown databases {unknown}")
    domains.load()
    report: dict[str, Any] = run_facts("referrals")
    del report["database"]
    report["databases"] = {}
    for kind in kinds:
        report["databases"][kind] = await run_database(kind, args)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
