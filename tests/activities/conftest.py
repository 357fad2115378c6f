"""Activities test world: a partner sending payments, a funded rebate campaign of merchant A
(its owner takes part without a code), and helpers to read balances from the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from incentive.auth import service as auth_service
from incentive.db import Database
from incentive.ledger import service as ledger
from incentive.ledger.models import Account
from tests.campaigns.conftest import World, create, walk
from tests.campaigns.conftest import world as world  # noqa: F401  (fixture)

REBATE = {
    "user_rebate_bp": 200,  # 2 %
    "merchant_rebate_bp": 100,  # 1 %
    "staff_rebate_bp": 50,  # 0.5 %
    "min_payment_fen": 1_000,
    "max_rebate_fen": 10_000,
}


@dataclass
class Sender:
    partner_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


@pytest.fixture
async def sender(db: Database) -> Sender:
    async with db.unit_of_work() as s:
        partner, key = await auth_service.create_partner(s, "PAYAPP", "Pay app")
    return Sender(partner.id, key)


async def funding_account(db: Database, asset: str = "CNY") -> int:
    async with db.unit_of_work() as s:
        account = await ledger.open_account(
            s, owner_type="platform", owner_id="marketing", asset=asset, allow_negative=True
        )
    return account.id


async def rebate_campaign(
    client: httpx.AsyncClient,
    db: Database,
    world: World,
    *,
    budget: int,
    owner: str = "merchant",
    **rules: Any,
) -> dict[str, Any]:
    """An active rebate campaign (merchant A's, or the platform's) funded with ``budget``."""
    actor = world.ma if owner == "merchant" else world.op
    campaign = await create(client, actor, rules={**REBATE, **rules})
    await walk(client, world, campaign["id"], "pending_review", "approved", "active", owner=actor)
    if budget:
        r = await client.post(
            f"/api/v1/campaigns/{campaign['id']}/budget",
            json={"amount": budget, "from_account_id": await funding_account(db)},
            headers={**world.op.headers, "Idempotency-Key": f"fund-{campaign['id']}"},
        )
        assert r.status_code == 201, r.text
    return campaign


def payment(id: str, customer: str, merchant: str, amount_fen: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "type": "payment",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer": customer,
        "merchant": merchant,
        "amount_fen": amount_fen,
        **extra,
    }


def refund(id: str, of: dict[str, Any], amount_fen: int) -> dict[str, Any]:
    return {
        "id": id,
        "type": "refund",
        "occurred_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        "customer": of["customer"],
        "merchant": of["merchant"],
        "amount_fen": amount_fen,
        "refers_to": of["id"],
    }


async def balance(db: Database, owner_type: str, owner_id: str, asset: str = "CNY") -> int:
    async with db.unit_of_work() as s:
        account = await ledger.find_account(
            s, owner_type=owner_type, owner_id=owner_id, asset=asset
        )
        return 0 if account is None else account.balance


async def budget_left(db: Database, campaign: dict[str, Any]) -> int:
    async with db.unit_of_work() as s:
        return (await ledger.get_account(s, campaign["budget_account_id"])).balance


async def cny_total(db: Database) -> int:
    """Sum of every CNY balance: 0 whatever moved, if the ledger is conserved."""
    async with db.unit_of_work() as s:
        total = await s.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(Account.asset == "CNY")
        )
    return int(total or 0)
