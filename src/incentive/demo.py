"""Demo data for the embedded default, so a newcomer can try the API at once.

Loaded on start when ``INCENTIVE_DEMO_DATA`` is true and the database has no users yet; goes
through the same domain services as every other entry point (so the ledger stays balanced).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select

from incentive.auth import service as auth
from incentive.auth.models import User
from incentive.auth.principal import Principal
from incentive.campaigns import service as campaigns
from incentive.db import Database, utcnow
from incentive.ledger import service as ledger

log = logging.getLogger(__name__)

DEMO_PASSWORD = "incentive-demo"
WELCOME_POINTS = 1_000
BUDGET_FEN = 100_000_00


async def load_if_empty(db: Database) -> bool:
    """Create the demo merchant, users, balances and a campaign; False if users exist."""
    async with db.unit_of_work() as s:
        if await s.scalar(select(func.count()).select_from(User)):
            return False
        merchant = await auth.create_merchant(s, "DEMO", "Demo Coffee")
        operator = await auth.create_user(s, "operator", DEMO_PASSWORD, "operator")
        await auth.create_user(s, "merchant", DEMO_PASSWORD, "merchant", merchant_code="DEMO")
        alice = await auth.create_user(s, "alice", DEMO_PASSWORD, "customer")
        issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="POINTS", allow_negative=True
        )
        cash_issuer = await ledger.open_account(
            s, owner_type="platform", owner_id="issuer", asset="CNY", allow_negative=True
        )
        points = await ledger.open_account(s, owner_type="user", owner_id=alice.id, asset="POINTS")
        await ledger.transfer(
            s,
            idempotency_key="demo:welcome:alice",
            debit_account_id=issuer.id,
            credit_account_id=points.id,
            amount=WELCOME_POINTS,
            kind="welcome_bonus",
        )
        op = Principal(operator.id, operator.username, "operator")
        now = utcnow()
        campaign = await campaigns.create_campaign(
            s,
            op,
            kind="rebate",
            name="Demo two-way rebate",
            description="2% back to the customer, 1% to the merchant",
            starts_at=now,
            ends_at=now + timedelta(days=30),
            rules={
                "kind": "rebate",
                "user_rebate_bp": 200,
                "merchant_rebate_bp": 100,
                "min_payment_fen": 1_000,
                "max_rebate_fen": 5_000,
            },
            merchant_id=merchant.id,
        )
        await campaigns.fund_budget(
            s,
            op,
            campaign.id,
            amount=BUDGET_FEN,
            from_account_id=cash_issuer.id,
            idempotency_key="demo:budget",
        )
    log.info("demo data loaded", extra={"users": ["operator", "merchant", "alice"]})
    return True
