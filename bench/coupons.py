"""Coupon claims and till redemptions over HTTP on PostgreSQL, beside a single ledger transfer
in the same run: prints one JSON document.

One real ``incentive serve`` (one uvicorn worker) on PostgreSQL (+ Redis when
``INCENTIVE_BENCH_REDIS_URL`` is set), driven by ``wrk`` (``bench/httpbench.py``), three lines
measured one after the other against the same server:

- ``transfer``: ``POST /api/v1/transfers``, one fixed body (the platform's marketing account →
  one sink account), the reference line exactly as ``bench/activities.py`` measures it;
- ``claim``: ``POST /api/v1/coupon-batches/{id}/claims`` on one big batch of our own coupons
  (merchant A's active ``coupon`` campaign, a quantity the run never exhausts). The callers
  are ``--customers`` customers in turn (wrk picks each request's token round robin), each
  allowed as many coupons as the batch holds, so no claim is refused by its limit;
- ``redemption``: ``POST /api/v1/till/redemptions`` by merchant A's staff, each request a
  different usable coupon of a second batch (its code in the body). Those coupons are issued
  beforehand through ``incentive.coupons.service.issue`` (1,000 per unit of work, not timed),
  twice what the faster of the two lines before answered (``--codes`` to set it).

``ratios`` compares each line with the transfer by requests/s and by server CPU per request
(the steadier figure on this shared machine; the issue's target, a claim at most 1.5x a
transfer, is judged on it). ``checks`` are read from the database after the run, by plain
queries outside the code under test: claims acknowledged vs coupons in the batch vs the
batch's ``claimed``/``stock`` and the customers' holdings; one standing redemption per
redeemed coupon, no coupon redeemed twice, no code sent twice; the ledger still summing to 0.

Every run uses a fresh database (``INCENTIVE_BENCH_DATABASE_URL``, default
postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_coupons), created and dropped here.

Usage: python bench/coupons.py [--seconds 15] [--concurrency 200] [--customers 1000]
[--codes N]   (``--seconds 5`` for a smoke run; wrk: ``apt-get install wrk``)
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from httpbench import Server, customers_and_operator, merchant_world, run_facts
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.coupons import service as coupons
from incentive.coupons.models import Coupon, CouponBatch, CouponHolding, CouponRedemption
from incentive.db import Database
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger.models import Account

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_coupons"
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL")
QUANTITY = 100_000_000  # never exhausted by a run: claims measure the path, not running out
FACE_VALUE_FEN = 500
SALE_FEN = 10_000
WARM_UP_SECONDS = 2
ISSUE_PER_UNIT = 1_000


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _coupon_batch(base: str, world: dict[str, Any], name: str) -> str:
    """Merchant A's coupon campaign (its own coupons: 500 fen off, no minimum spend, each
    customer allowed the whole quantity), reviewed and active; the id of its batch."""
    now = datetime.now(UTC)
    rules = {
        "face_value_fen": FACE_VALUE_FEN,
        "quantity": QUANTITY,
        "per_user_limit": QUANTITY,
    }
    staff, op = world["staff"], world["operator"]
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.post(
            "/api/v1/campaigns",
            headers=_auth(staff),
            json={
                "kind": "coupon",
                "name": name,
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(days=1)).isoformat(),
                "rules": rules,
            },
        )
        r.raise_for_status()
        campaign_id = r.json()["id"]
        # the automated review approves a clean campaign at submission
        for to, who in (("pending_review", staff), ("active", staff)):
            r = await client.post(
                f"/api/v1/campaigns/{campaign_id}/transitions",
                headers=_auth(who),
                json={"to": to, "reason": "bench"},
            )
            r.raise_for_status()
        r = await client.get(
            "/api/v1/coupon-batches", params={"campaign_id": campaign_id}, headers=_auth(op)
        )
        r.raise_for_status()
        (batch,) = r.json()["items"]
    return str(batch["id"])


async def _issue(db: Database, batch_id: str, count: int) -> list[str]:
    """``count`` usable coupons of the batch put into wallets through the service (one unit
    of work per 1,000, each unit's coupons one customer's); their codes, in issue order."""
    codes: list[str] = []
    actor = coupons.Actor("bench", "operator")
    for unit in range(math.ceil(count / ISSUE_PER_UNIT)):
        async with db.unit_of_work() as s:
            for _ in range(min(ISSUE_PER_UNIT, count - len(codes))):
                coupon = await coupons.issue(s, batch_id, f"bench-wallet-{unit}", actor, "bench")
                codes.append(coupon.code)
    return codes


async def _claims_outcome(db: Database, batch_id: str) -> dict[str, int]:
    async with db.unit_of_work() as s:
        batch = await s.get(CouponBatch, batch_id)
        assert batch is not None
        in_batch = select(func.count()).where(Coupon.batch_id == batch_id)
        return {
            "coupons_in_batch": int(await s.scalar(in_batch) or 0),
            "usable": int(await s.scalar(in_batch.where(Coupon.state == "usable")) or 0),
            "distinct_codes": int(
                await s.scalar(
                    select(func.count(func.distinct(Coupon.code))).where(
                        Coupon.batch_id == batch_id
                    )
                )
                or 0
            ),
            "holdings_sum": int(
                await s.scalar(
                    select(func.coalesce(func.sum(CouponHolding.claimed), 0)).where(
                        CouponHolding.batch_id == batch_id
                    )
                )
                or 0
            ),
            "customers_holding": int(
                await s.scalar(select(func.count()).where(CouponHolding.batch_id == batch_id)) or 0
            ),
            "batch_claimed": batch.claimed,
            "batch_stock": batch.stock,
            "batch_quantity": batch.quantity,
        }


async def _redemptions_outcome(db: Database, batch_id: str) -> dict[str, int]:
    of_batch = CouponRedemption.coupon_id.in_(select(Coupon.id).where(Coupon.batch_id == batch_id))
    async with db.unit_of_work() as s:
        per_coupon = (
            select(CouponRedemption.coupon_id, func.count().label("n"))
            .where(of_batch)
            .group_by(CouponRedemption.coupon_id)
            .subquery()
        )
        return {
            "redemptions": int(await s.scalar(select(func.count()).where(of_batch)) or 0),
            "standing": int(
                await s.scalar(
                    select(func.count()).where(of_batch, CouponRedemption.undone_at.is_(None))
                )
                or 0
            ),
            "coupons_redeemed": int(
                await s.scalar(
                    select(func.count()).where(
                        Coupon.batch_id == batch_id, Coupon.state == "redeemed"
                    )
                )
                or 0
            ),
            "coupons_with_a_redemption": int(
                await s.scalar(select(func.count()).select_from(per_coupon)) or 0
            ),
            "coupons_redeemed_more_than_once": int(
                await s.scalar(select(func.count()).where(per_coupon.c.n > 1)) or 0
            ),
            "discount_fen_sum": int(
                await s.scalar(
                    select(func.coalesce(func.sum(CouponRedemption.discount_fen), 0)).where(
                        of_batch
                    )
                )
                or 0
            ),
            "cny_balances_sum": int(
                await s.scalar(
                    select(func.coalesce(func.sum(Account.balance), 0)).where(
                        Account.asset == "CNY"
                    )
                )
                or 0
            ),
        }


def _answered(*runs: dict[str, Any]) -> dict[str, int]:
    """Over wrk runs: requests acknowledged (2xx), answered otherwise, and sent."""
    return {
        "acknowledged": sum(r["ok"] for r in runs),
        "refused": sum(r["conflict_409"] + r["unavailable_503"] + r["other"] for r in runs),
        "sent": sum(r["sent"] for r in runs),
    }


def _ratio(line: dict[str, Any], transfer: dict[str, Any]) -> dict[str, float]:
    return {
        "by_rps": round(transfer["rps"] / max(line["rps"], 1), 2),
        "by_server_cpu": round(line["server_cpu_ms"] / max(transfer["server_cpu_ms"], 1e-9), 2),
    }


async def bench(
    url: str, db: Database, server: Server, data_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    seconds, concurrency = args.seconds, args.concurrency
    world = await merchant_world(db, data_dir, "coupon")
    customers, _ = await customers_and_operator(db, data_dir / "keys", args.customers)
    claims_batch = await _coupon_batch(server.base, world, "bench claims")
    till_batch = await _coupon_batch(server.base, world, "bench till")
    transfer_body = json.dumps(
        {
            "debit_account_id": world["marketing"],
            "credit_account_id": world["sink"],
            "amount": 7,
            "kind": "bench",
        }
    )
    claim_path = f"/api/v1/coupon-batches/{claims_batch}/claims"
    post = {"method": "POST", "connections": concurrency}
    as_operator = {**post, "tokens": [world["operator"]]}
    as_customers = {**post, "tokens": customers, "body": ""}

    def measure(path: str, **kwargs: Any) -> dict[str, Any]:
        # Each run starts on an idle server and ends once what it sent is served, so no run's
        # leftovers land in the next one's figures or in the checks.
        figures = server.wrk(path, **kwargs)
        figures["settled_after_s"] = server.settle()
        return figures

    warm = WARM_UP_SECONDS
    measure("/healthz", seconds=warm, connections=concurrency)
    measure("/api/v1/transfers", seconds=warm, body=transfer_body, **as_operator)
    claims_warm = measure(claim_path, seconds=warm, **as_customers)
    transfer = measure("/api/v1/transfers", seconds=seconds, body=transfer_body, **as_operator)
    claim = measure(claim_path, seconds=seconds, **as_customers)

    # Enough coupons for the till never to send a code twice: twice what the faster line so
    # far answered, per run, and one request per connection more (sent, never answered).
    rate = max(transfer["rps"], claim["rps"])
    warm_codes = math.ceil(2 * rate * warm) + 2 * concurrency
    codes_needed = args.codes or math.ceil(2 * rate * seconds) + 2 * concurrency
    started = time.perf_counter()
    codes = await _issue(db, till_batch, warm_codes + codes_needed)
    issue_s = time.perf_counter() - started
    sales = [json.dumps({"code": c, "amount_fen": SALE_FEN}) for c in codes]
    as_staff = {**post, "tokens": [world["staff"]]}
    till = "/api/v1/till/redemptions"
    till_warm = measure(till, seconds=warm, bodies=sales[:warm_codes], **as_staff)
    redemption = measure(till, seconds=seconds, bodies=sales[warm_codes:], **as_staff)
    redemption["codes_available"] = len(sales) - warm_codes

    claimed = await _claims_outcome(db, claims_batch)
    redeemed = await _redemptions_outcome(db, till_batch)
    claims = _answered(claims_warm, claim)
    at_till = _answered(till_warm, redemption)
    n_coupons = claimed["coupons_in_batch"]
    n_standing = redeemed["standing"]
    claim_ratio = _ratio(claim, transfer)
    errors = server.errors_logged()
    return {
        "server": "incentive serve, 1 uvicorn worker, PostgreSQL"
        + (" + Redis" if REDIS_URL else ""),
        "load": f"wrk -t2 -c{concurrency} -d{seconds}s each line, after a {warm} s warm-up",
        "transfer": transfer,
        "claim": claim,
        "redemption": redemption,
        "ratios": {
            "claim_cost_vs_transfer": claim_ratio,
            "redemption_cost_vs_transfer": _ratio(redemption, transfer),
            "target": "a claim costs <= 1.5x a single transfer (server CPU per request)",
            "target_met": claim_ratio["by_server_cpu"] <= 1.5,
        },
        "outcome": {
            "claims": {**claims, **claimed},
            "redemptions": {
                **at_till,
                **redeemed,
                "codes_issued_beforehand": len(codes),
                "issued_per_s_through_the_service": round(len(codes) / issue_s),
            },
        },
        "checks": {
            # wrk counts only answers it read: claims still in flight when it stopped may be
            # served unacknowledged, so the coupons lie between the 201s and the requests sent
            "claims_acknowledged_all_in_batch": claims["acknowledged"] <= n_coupons,
            "no_coupon_without_a_claim_sent": n_coupons <= claims["sent"] - claims["refused"],
            "no_claim_refused": claims["refused"] == 0,
            "batch_claimed_equals_coupons": claimed["batch_claimed"] == n_coupons,
            "batch_stock_is_quantity_less_coupons": claimed["batch_stock"]
            == claimed["batch_quantity"] - n_coupons,
            "holdings_sum_equals_coupons": claimed["holdings_sum"] == n_coupons,
            "claimed_coupons_usable_with_distinct_codes": claimed["usable"]
            == claimed["distinct_codes"]
            == n_coupons,
            "no_code_sent_twice": till_warm["bodies_reused"] + redemption["bodies_reused"] == 0,
            "no_redemption_refused": at_till["refused"] == 0,
            "redemptions_acknowledged_all_standing": at_till["acknowledged"] <= n_standing,
            "no_redemption_without_a_request_sent": n_standing
            <= at_till["sent"] - at_till["refused"],
            "each_redeemed_coupon_one_standing_redemption": redeemed["coupons_redeemed"]
            == redeemed["coupons_with_a_redemption"]
            == n_standing
            == redeemed["redemptions"],
            "no_coupon_redeemed_twice": redeemed["coupons_redeemed_more_than_once"] == 0,
            "discounts_are_face_value": redeemed["discount_fen_sum"] == FACE_VALUE_FEN * n_standing,
            "ledger_conserved": redeemed["cny_balances_sum"] == 0,
            # (a claim cut off by wrk's stop before its empty body was read is a quiet 400)
            "no_server_error_logged": errors == 0,
        },
        "server_errors_logged": errors,
        "notes": [
            f"claims: {len(customers)} customers, each request the next one's token (round "
            "robin), per_user_limit = quantity so no claim meets its limit; every claim takes "
            "stock from the same batch row",
            "redemptions: each request a different coupon code from a list issued beforehand "
            "through coupons.service.issue (httpbench bodies=); the run sends a code twice "
            "only if the list runs out (bodies_reused > 0: raise --codes)",
            "claims and redemptions acknowledged = wrk's 2xx answers, warm-up included; a "
            "request in flight when wrk stopped may be served without its answer counted "
            "(coupons - acknowledged <= sent - answered)",
        ],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=15, help="each measured wrk run")
    parser.add_argument("--concurrency", type=int, default=200, help="wrk connections")
    parser.add_argument("--customers", type=int, default=1000, help="claiming customers")
    parser.add_argument(
        "--codes", type=int, default=0, help="coupons issued for the measured till run (0: sized)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (apt-get install wrk)")
    url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
    name = str(make_url(url).database)
    await recreate_database(url, name)
    db = Database(url)
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-"))
    report: dict[str, Any] = run_facts("coupons")
    try:
        await migrations.upgrade(db.engine)
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": "WARNING",
        }
        if REDIS_URL:
            env["INCENTIVE_REDIS_URL"] = REDIS_URL
        with Server(env, log=data_dir / "server.log") as server:
            report.update(await bench(url, db, server, data_dir, args))
    finally:
        await db.dispose()
        await drop_database(url, name)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
