"""Reward grants over HTTP on PostgreSQL + Redis, beside a flash-sale purchase in the same run:
prints one JSON document.

One real ``incentive serve`` (one uvicorn worker) on PostgreSQL with Redis
(``INCENTIVE_BENCH_REDIS_URL``, required: the stock engine of both the sale and the rewards),
driven by ``wrk`` (``bench/httpbench.py``), four lines measured one after the other against
the same server, each after its own 2 s warm-up:

- ``purchase``: ``POST /api/v1/flash-sales/{id}/purchases`` of quantity 1 exactly as
  ``bench/flash_sale.py`` measures it (its ``_sale``: a sale of 10^8 units the run never sells
  out, a per-user limit of 10^6 the run never reaches), the reference line;
- ``grant_direct``: ``POST /api/v1/campaigns/{id}/rewards/claims`` on a platform reward
  campaign whose first reward serves (chain ``[A points 10, stock 10^8]``);
- ``grant_one_fallback``: the same on a campaign whose chain is ``[A stock 0, B points 10,
  stock 10^8]``: every grant skips A (``out-of-stock``) and gives B. The issue's target, a
  grant with one fallback step at most 1.5x a purchase, is judged on this line;
- ``transfer`` (context, no target): ``POST /api/v1/transfers`` by the operator, one fixed
  body (a CNY platform account → a sink), as ``bench/coupons.py`` measures it: every grant
  above makes one such ledger transfer from its campaign's budget inside its transaction.

The callers are ``--customers`` customers in turn (wrk picks each request's token round
robin), every request with its own ``Idempotency-Key`` (the claim's trigger); both reward
campaigns allow each customer 10^8 rewards and are funded with 10^9 points from a POINTS
platform account, so no claim is refused by its limit or its budget.

``ratios`` compares each grant line with the purchase by server CPU per request (the steadier
figure on this shared 2-core machine; the target is judged on it) and by requests/s.
``checks`` are read after the run by plain queries outside the code under test (the tables,
the ledger's balances, the stock store's levels): grants acknowledged vs rows in
``reward_grants`` per campaign; no reward given beyond its stock and every unit accounted for
(left in the stock store + granted = stock); every fallback grant gave B after A was skipped
out of stock; each campaign's budget spent = its grants' amounts = its reward transfers; the
budgets' balances plus the customers' POINTS balances = what was funded; every asset's
balances summing to 0; purchases committed vs acknowledged.

Every run uses a fresh database (``INCENTIVE_BENCH_DATABASE_URL``, default
postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_rewards), created and dropped here;
the Redis database named by ``INCENTIVE_BENCH_REDIS_URL`` is emptied first.

Usage: INCENTIVE_BENCH_REDIS_URL=redis://127.0.0.1:6379/N python bench/rewards.py
[--seconds 15] [--concurrency 200] [--customers 2000]
(``--seconds 5`` for a smoke run; wrk: ``apt-get install wrk``)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
from flash_sale import _committed, _sale
from httpbench import Server, customers_and_operator, run_facts
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from incentive import migrations
from incentive.campaigns.models import Campaign
from incentive.db import Database
from incentive.kit.pgadmin import drop_database, recreate_database
from incentive.ledger import service as ledger
from incentive.ledger.models import Account, Transfer
from incentive.rewards.grants import pool_of
from incentive.rewards.models import RewardGrant, RewardItem
from incentive.stock.engine import stock_engine_from_url

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1/incentive_bench_rewards"
REDIS_URL = os.environ.get("INCENTIVE_BENCH_REDIS_URL")
SALE_STOCK = 100_000_000  # never sold out by a run (flash_sale.py's big sale)
STOCK = 100_000_000  # of the reward that serves: never exhausted by a run
LIMIT = 100_000_000  # rewards per customer per campaign: never reached
AMOUNT = 10  # points per reward
BUDGET = 1_000_000_000  # points funded per campaign: never exhausted
WARM_UP_SECONDS = 2
TRANSFERS = "/api/v1/transfers"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _reward(code: str, stock: int) -> dict[str, Any]:
    return {"code": code, "type": "points", "delivery": "ledger", "amount": AMOUNT, "stock": stock}


async def _points_funding(db: Database) -> int:
    """The platform's POINTS account that funds both budgets (may go negative)."""
    async with db.unit_of_work() as s:
        account = await ledger.open_account(
            s, owner_type="platform", owner_id="marketing", asset="POINTS", allow_negative=True
        )
    return int(account.id)


async def _transfer_accounts(db: Database) -> tuple[int, int]:
    """The transfer line's accounts, in CNY so the rewards' POINTS are left alone: the
    platform's marketing account (may go negative) and one sink account."""
    async with db.unit_of_work() as s:
        marketing = await ledger.open_account(
            s, owner_type="platform", owner_id="marketing", asset="CNY", allow_negative=True
        )
        sink = await ledger.open_account(s, owner_type="user", owner_id="sink", asset="CNY")
    return int(marketing.id), int(sink.id)


async def _reward_campaign(
    client: httpx.AsyncClient, operator: str, name: str, chain: list[dict[str, Any]], funding: int
) -> str:
    """A platform reward campaign with this chain, reviewed, active and funded with
    ``BUDGET`` points; its id."""
    now = datetime.now(UTC)
    r = await client.post(
        "/api/v1/campaigns",
        headers=_auth(operator),
        json={
            "kind": "reward",
            "name": name,
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
            "rules": {"rewards": chain, "per_user_limit": LIMIT, "budget_asset": "POINTS"},
        },
    )
    r.raise_for_status()
    campaign_id = str(r.json()["id"])
    for to in ("pending_review", "active"):  # the automated review approves it
        r = await client.post(
            f"/api/v1/campaigns/{campaign_id}/transitions",
            headers=_auth(operator),
            json={"to": to, "reason": "bench"},
        )
        r.raise_for_status()
    r = await client.post(
        f"/api/v1/campaigns/{campaign_id}/budget",
        headers={**_auth(operator), "Idempotency-Key": f"fund-{campaign_id}"},
        json={"amount": BUDGET, "from_account_id": funding},
    )
    r.raise_for_status()
    return campaign_id


async def _grants_outcome(db: Database, campaign_id: str) -> dict[str, Any]:
    """What the tables say a reward campaign gave (read outside the code under test)."""
    async with db.unit_of_work() as s:
        rows = (
            await s.execute(
                select(RewardGrant.reward_code, RewardGrant.amount, RewardGrant.chain).where(
                    RewardGrant.campaign_id == campaign_id
                )
            )
        ).all()
        items = {
            str(code): int(total)
            for code, total in (
                await s.execute(
                    select(RewardItem.code, RewardItem.stock_total).where(
                        RewardItem.campaign_id == campaign_id
                    )
                )
            ).all()
        }
        budget_account = await s.scalar(
            select(Campaign.budget_account_id).where(Campaign.id == campaign_id)
        )
        budget_balance = await s.scalar(select(Account.balance).where(Account.id == budget_account))
        reference = Transfer.reference == f"campaign:{campaign_id}"
        rewarded = select(func.count(), func.coalesce(func.sum(Transfer.amount), 0)).where(
            Transfer.kind == "reward", reference
        )
        transfers, transferred = (await s.execute(rewarded)).one()
    chains = Counter(
        tuple((step["code"], step["result"], step["reason"]) for step in chain)
        for _, _, chain in rows
    )
    return {
        "grants": len(rows),
        "given": dict(Counter(str(code) for code, _, _ in rows)),
        "chains_walked": [{"steps": list(k), "grants": n} for k, n in chains.items()],
        "_chains": chains,
        "amount_sum": sum(int(amount) for _, amount, _ in rows),
        "stock_total": items,
        "budget_balance": int(budget_balance or 0),
        "reward_transfers": int(transfers),
        "reward_transfers_sum": int(transferred),
    }


async def _levels(campaign_id: str, codes: list[str]) -> dict[str, int]:
    """Units left in the stock store per reward (Redis, read directly through the engine)."""
    assert REDIS_URL is not None
    engine = stock_engine_from_url(REDIS_URL)
    try:
        return {code: sum(await engine.remaining(pool_of(campaign_id, code))) for code in codes}
    finally:
        await engine.aclose()


async def _ledger(db: Database) -> dict[str, Any]:
    async with db.unit_of_work() as s:
        per_asset = {
            str(asset): int(total)
            for asset, total in (
                await s.execute(
                    select(Account.asset, func.coalesce(func.sum(Account.balance), 0)).group_by(
                        Account.asset
                    )
                )
            ).all()
        }
        customers = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.owner_type == "user", Account.asset == "POINTS"
            )
        )
    return {"balances_sum_per_asset": per_asset, "customers_points": int(customers or 0)}


def _answered(*runs: dict[str, Any]) -> dict[str, int]:
    """Over wrk runs: requests acknowledged (2xx), answered otherwise, and sent."""
    return {
        "acknowledged": sum(r["ok"] for r in runs),
        "refused": sum(r["conflict_409"] + r["unavailable_503"] + r["other"] for r in runs),
        "sent": sum(r["sent"] for r in runs),
    }


def _ratio(line: dict[str, Any], purchase: dict[str, Any]) -> dict[str, float]:
    return {
        "by_server_cpu": round(line["server_cpu_ms"] / max(purchase["server_cpu_ms"], 1e-9), 2),
        "by_rps": round(purchase["rps"] / max(line["rps"], 1), 2),
    }


def _grant_checks(
    name: str, answered: dict[str, int], outcome: dict[str, Any], levels: dict[str, int]
) -> dict[str, bool]:
    n = outcome["grants"]
    stock = outcome["stock_total"]
    return {
        # wrk counts only answers it read: claims still in flight when it stopped may be
        # served unacknowledged, so the grants lie between the 201s and the requests sent
        f"{name}_grants_acknowledged_all_in_table": answered["acknowledged"] <= n,
        f"{name}_no_grant_without_a_claim_sent": n <= answered["sent"] - answered["refused"],
        f"{name}_no_claim_refused": answered["refused"] == 0,
        f"{name}_no_reward_beyond_its_stock": all(
            outcome["given"].get(code, 0) <= total for code, total in stock.items()
        ),
        f"{name}_units_left_plus_granted_equal_stock": all(
            levels[code] + outcome["given"].get(code, 0) == total for code, total in stock.items()
        ),
        f"{name}_budget_spent_equals_grants_and_transfers": BUDGET - outcome["budget_balance"]
        == outcome["amount_sum"]
        == outcome["reward_transfers_sum"]
        == AMOUNT * n,
        f"{name}_one_reward_transfer_per_grant": outcome["reward_transfers"] == n,
    }


async def bench(db: Database, server: Server, data_dir: Path, args: argparse.Namespace) -> Any:
    seconds, concurrency = args.seconds, args.concurrency
    customers, operator = await customers_and_operator(db, data_dir / "keys", args.customers)
    funding = await _points_funding(db)
    marketing, sink = await _transfer_accounts(db)
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
        sale = await _sale(client, operator, SALE_STOCK)
        direct = await _reward_campaign(
            client, operator, "bench direct", [_reward("A", STOCK)], funding
        )
        fallback = await _reward_campaign(
            client, operator, "bench one fallback", [_reward("A", 0), _reward("B", STOCK)], funding
        )
    buy = {"tokens": customers, "method": "POST", "connections": concurrency}
    purchase_path = f"/api/v1/flash-sales/{sale}/purchases"
    direct_path = f"/api/v1/campaigns/{direct}/rewards/claims"
    fallback_path = f"/api/v1/campaigns/{fallback}/rewards/claims"

    transfer_body = json.dumps(
        {"debit_account_id": marketing, "credit_account_id": sink, "amount": 7, "kind": "bench"}
    )
    as_operator = {**buy, "tokens": [operator]}

    def measure(path: str, run_seconds: int, body: str) -> dict[str, Any]:
        # Each run starts on an idle server and ends once what it sent is served, so no run's
        # leftovers land in the next one's figures or in the checks.
        who = as_operator if path == TRANSFERS else buy
        figures = server.wrk(path, seconds=run_seconds, body=body, **who)
        figures["settled_after_s"] = server.settle()
        return figures

    warm = WARM_UP_SECONDS
    server.wrk("/healthz", seconds=warm, connections=concurrency)
    server.settle()
    lines: dict[str, tuple[str, str]] = {
        "purchase": (purchase_path, '{"quantity": 1}'),
        "grant_direct": (direct_path, ""),
        "grant_one_fallback": (fallback_path, ""),
        "transfer": (TRANSFERS, transfer_body),
    }
    warm_ups: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for name, (path, body) in lines.items():
        warm_ups[name] = measure(path, warm, body)
        runs[name] = measure(path, seconds, body)

    bought = _answered(warm_ups["purchase"], runs["purchase"])
    committed = await _committed(db, sale)
    answered = {
        name: _answered(warm_ups[name], runs[name])
        for name in ("grant_direct", "grant_one_fallback")
    }
    outcome = {
        "grant_direct": await _grants_outcome(db, direct),
        "grant_one_fallback": await _grants_outcome(db, fallback),
    }
    levels = {
        "grant_direct": await _levels(direct, ["A"]),
        "grant_one_fallback": await _levels(fallback, ["A", "B"]),
    }
    books = await _ledger(db)
    one_fallback = (("A", "skipped", "out-of-stock"), ("B", "given", None))
    no_fallback = (("A", "given", None),)
    fb, dr = outcome["grant_one_fallback"], outcome["grant_direct"]
    fb_chains, dr_chains = fb.pop("_chains"), dr.pop("_chains")
    errors = server.errors_logged()
    ratio = _ratio(runs["grant_one_fallback"], runs["purchase"])
    checks = {
        "purchases_acknowledged_all_committed": bought["acknowledged"] <= committed,
        "no_purchase_without_a_request_sent": committed <= bought["sent"] - bought["refused"],
        "no_purchase_refused": bought["refused"] == 0,
        "no_transfer_refused": _answered(warm_ups["transfer"], runs["transfer"])["refused"] == 0,
        **_grant_checks("direct", answered["grant_direct"], dr, levels["grant_direct"]),
        "direct_every_grant_gave_A_first": dr_chains == Counter({no_fallback: dr["grants"]})
        and dr["given"] == {"A": dr["grants"]},
        **_grant_checks(
            "fallback", answered["grant_one_fallback"], fb, levels["grant_one_fallback"]
        ),
        "fallback_every_grant_gave_B_after_A_out_of_stock": fb_chains
        == Counter({one_fallback: fb["grants"]})
        and fb["given"] == {"B": fb["grants"]},
        "budgets_plus_customers_points_equal_funded": dr["budget_balance"]
        + fb["budget_balance"]
        + books["customers_points"]
        == 2 * BUDGET,
        "ledger_sums_to_0_per_asset": all(v == 0 for v in books["balances_sum_per_asset"].values()),
        "no_server_error_logged": errors == 0,
    }
    return {
        "server": "incentive serve, 1 uvicorn worker, PostgreSQL + Redis (stock engine)",
        "load": f"wrk -t2 -c{concurrency} -d{seconds}s each line, after its own {warm} s "
        f"warm-up; {len(customers)} customers round robin",
        "purchase": runs["purchase"],
        "grant_direct": runs["grant_direct"],
        "grant_one_fallback": runs["grant_one_fallback"],
        "transfer": runs["transfer"],
        "ratios": {
            "grant_direct_vs_purchase": _ratio(runs["grant_direct"], runs["purchase"]),
            "grant_one_fallback_vs_purchase": ratio,
            "target": "a grant with one fallback step costs <= 1.5x a purchase (server CPU "
            "per request)",
            "target_met": ratio["by_server_cpu"] <= 1.5,
            # not a target: what the ledger transfer inside every grant costs on its own
            "grant_one_fallback_vs_transfer": _ratio(runs["grant_one_fallback"], runs["transfer"]),
            "transfer_vs_purchase": _ratio(runs["transfer"], runs["purchase"]),
        },
        "outcome": {
            "purchases": {**bought, "committed_units": committed},
            "grant_direct": {**answered["grant_direct"], **dr, "left": levels["grant_direct"]},
            "grant_one_fallback": {
                **answered["grant_one_fallback"],
                **fb,
                "left": levels["grant_one_fallback"],
            },
            "ledger": books,
        },
        "checks": checks,
        "all_checks_pass": all(checks.values()),
        "server_errors_logged": errors,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "notes": [
            "acknowledged = wrk's 2xx answers, warm-up included; a request in flight when wrk "
            "stopped may be served without its answer counted (rows - acknowledged <= sent - "
            "answered)",
            "every reward is 10 points delivered by a ledger transfer from the campaign's "
            "budget; A of the fallback campaign has stock 0, so every grant there takes from "
            "A's pool in vain (one stock-engine call) before B",
        ],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=15, help="each measured wrk run")
    parser.add_argument("--concurrency", type=int, default=200, help="wrk connections")
    parser.add_argument("--customers", type=int, default=2000, help="claiming/buying customers")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not on PATH (apt-get install wrk)")
    if REDIS_URL is None:
        parser.error("set INCENTIVE_BENCH_REDIS_URL (redis://127.0.0.1:6379/N, emptied here)")
    url = os.environ.get("INCENTIVE_BENCH_DATABASE_URL", DEFAULT_PG)
    name = str(make_url(url).database)
    await recreate_database(url, name)
    redis.Redis.from_url(REDIS_URL).flushdb()
    db = Database(url)
    data_dir = Path(tempfile.mkdtemp(prefix="incentive-bench-"))
    report: dict[str, Any] = run_facts("rewards")
    try:
        await migrations.upgrade(db.engine)
        env = {
            "INCENTIVE_DATA_DIR": str(data_dir),
            "INCENTIVE_DATABASE_URL": url,
            "INCENTIVE_REDIS_URL": REDIS_URL,
            "INCENTIVE_DEMO_DATA": "false",
            "INCENTIVE_LOG_LEVEL": "WARNING",
        }
        with Server(env, log=data_dir / "server.log") as server:
            report.update(await bench(db, server, data_dir, args))
    finally:
        await db.dispose()
        await drop_database(url, name)
        shutil.rmtree(data_dir, ignore_errors=True)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
