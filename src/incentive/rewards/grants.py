"""Giving a reward: user type, the chain walk with automatic fallback, delivery.

One grant, in the caller's unit of work (the claim route's, or the activity's):

1. the customer's count of rewards from the campaign goes up by one only while below the
   campaign's limit (one ``INSERT … ON CONFLICT DO UPDATE … WHERE granted < :limit``, which
   also holds the customer's row until the commit, so two triggers of one customer never
   both count as the first); the first is a **first-time** participant's — across the
   campaign's participant group when it has one (a second upsert) — the others
   **returning**;
2. the rewards for that user type are tried in chain order: one unit of the reward and the
   customer's use of it are taken in one atomic step of the stock engine
   (``take_within_quota``), then delivered — a ledger transfer from the budget, a coupon
   through the coupons domain (``coupons.service.issue``, in a savepoint), or a message
   through the outbox. A reward that cannot serve (``out-of-stock``, ``limit-reached``,
   ``budget-exhausted``, ``delivery-failed``; ``audience`` for another user type) is skipped
   and its unit given back at once; the next one is tried;
3. the grant row records the chain walked; its unique ``(campaign, customer, trigger_key)``
   makes a trigger count once (a concurrent duplicate rolls back and answers the first).

The unit taken for the reward given stays taken only if the transaction commits
(``stock.holds``); a 201 is sent only after the commit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.campaigns.kinds import CampaignFacts
from incentive.config import live_config
from incentive.coupons import service as coupons
from incentive.coupons.errors import (
    BatchClosed,
    BatchNotFound,
    ClaimLimitReached,
    CouponsExhausted,
)
from incentive.db import insert as db_insert
from incentive.db import new_id, per_dialect, utcnow
from incentive.errors import ServiceUnavailable
from incentive.ledger import service as ledger
from incentive.ledger.errors import BalanceLimit, InsufficientFunds
from incentive.rewards import metrics
from incentive.rewards.errors import NoRewardAvailable, NotRewarding, RewardLimitReached
from incentive.rewards.keys import MESSAGE_WEBHOOK_URL
from incentive.rewards.models import RewardGrant, RewardHolding, RewardItem, RewardParticipant
from incentive.rewards.rules import RewardRules, reward_rules
from incentive.stock import StockEngine
from incentive.stock.engine import MAX_STOCK, Deduction
from incentive.stock.errors import SoldOut, StockPoolMissing
from incentive.stock.holds import compensate, keep_if_committed

MESSAGE_TOPIC = "rewards.message"

# A grant holds its reward's pool fence shared until it ends, so a rebuild of the pool (which
# takes the fence exclusive, ``fence_exclusive``) counts the grants only once every grant
# that may have taken a unit from the lost pool has committed or rolled back. A PostgreSQL
# advisory lock of the transaction: no row is written, so many grants share it cheaply (a row
# share lock on one hot row churns MultiXacts). On SQLite the write lock already serialises
# grants and rebuilds.
_FENCE_SHARED = text("SELECT pg_advisory_xact_lock_shared(hashtext(:pool))")
_FENCE_EXCLUSIVE = text("SELECT pg_advisory_xact_lock(hashtext(:pool))")


async def fence_exclusive(session: AsyncSession, pool: str) -> None:
    """Wait until no grant that may have taken from ``pool`` is in flight, and keep new ones
    out until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_FENCE_EXCLUSIVE, {"pool": pool})


_GRANTS = cast(Table, RewardGrant.__table__)
_HOLDINGS = cast(Table, RewardHolding.__table__)
_PARTICIPANTS = cast(Table, RewardParticipant.__table__)


def pool_of(campaign_id: str, code: str) -> str:
    return f"rw:{campaign_id}:{code}"


_PLAIN_USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def stock_user(customer: str) -> str:
    """The customer's name in the stock engine (their use of each reward). A customer id an
    activity's sender gives may hold any printable character, the stock engine's names fewer:
    such an id (and any with a ``:``, so the two never meet) goes by its hex."""
    if _PLAIN_USER.fullmatch(customer):
        return customer
    return "hex:" + customer.encode().hex()


@dataclass(frozen=True)
class Item:
    """A reward of the live chain, as the walk needs it."""

    code: str
    position: int
    title: str | None
    type: str
    delivery: str
    amount: int
    audience: str
    per_user_limit: int | None
    batch_id: str | None
    message: str | None

    @classmethod
    def of(cls, row: RewardItem) -> Item:
        return cls(
            row.code,
            row.position,
            row.title,
            row.type,
            row.delivery,
            row.amount,
            row.audience,
            row.per_user_limit,
            row.batch_id,
            row.message,
        )


@dataclass(frozen=True)
class Chain:
    """A campaign's facts and its live chain (retired rewards left out), in order."""

    campaign: CampaignFacts
    items: tuple[Item, ...]
    loaded_at: float

    @property
    def rules(self) -> RewardRules:
        return reward_rules(self.campaign)


async def live_items(session: AsyncSession, campaign_id: str) -> tuple[Item, ...]:
    rows = await session.scalars(
        select(RewardItem)
        .where(RewardItem.campaign_id == campaign_id, RewardItem.retired_at.is_(None))
        .order_by(RewardItem.position, RewardItem.code)
    )
    return tuple(Item.of(r) for r in rows)


@dataclass
class Walk:
    """What walking the chain gave: the item, how it was delivered, and every step."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    item: Item | None = None
    deduction: Deduction | None = None
    state: str = "granted"
    delivery_ref: str | None = None

    def skip(self, item: Item, reason: str) -> None:
        if reason != "audience":  # meant for the other user type: no fallback
            metrics.SKIPS.labels(reason).inc()
        self.steps.append({"code": item.code, "result": "skipped", "reason": reason})

    def held(self) -> dict[str, Any]:
        """The grant's columns for what the walk gave (nothing: a ``failed`` grant)."""
        if self.item is None:
            return {
                "reward_code": None,
                "type": None,
                "delivery": None,
                "amount": 0,
                "state": "failed",
                "delivery_ref": None,
                "takes": [],
            }
        assert self.deduction is not None
        return {
            "reward_code": self.item.code,
            "type": self.item.type,
            "delivery": self.item.delivery,
            "amount": self.item.amount,
            "state": self.state,
            "delivery_ref": self.delivery_ref,
            "takes": [[t.bucket, t.quantity] for t in self.deduction.takes],
        }

    @property
    def skipped(self) -> int:
        """Rewards that could not serve (one meant for the other user type is no fallback)."""
        return sum(1 for s in self.steps if s["result"] == "skipped" and s["reason"] != "audience")


# --------------------------------------------------------------------------- statements

_COUNT: dict[tuple[str, str], Any] = {}  # by (dialect, table): built once, run with parameters


def _count_statement(dialect: str, table: Table, scope: str) -> Any:
    """One more reward for the customer in ``scope``, only while below ``:limit``."""
    if (dialect, table.name) not in _COUNT:
        c = table.c
        _COUNT[dialect, table.name] = (
            db_insert(dialect, table)
            .values({scope: bindparam("scope"), "customer_id": bindparam("customer"), "granted": 1})
            .on_conflict_do_update(
                index_elements=[scope, "customer_id"],
                set_={"granted": c.granted + 1},
                where=c.granted < bindparam("limit"),
            )
            .returning(c.granted)
        )
    return _COUNT[dialect, table.name]


async def _count(
    session: AsyncSession, table: Table, scope_column: str, scope: str, customer: str, limit: int
) -> int | None:
    stmt = _count_statement(session.get_bind().dialect.name, table, scope_column)
    row = (
        await session.execute(stmt, {"scope": scope, "customer": customer, "limit": limit})
    ).first()
    return None if row is None else int(row[0])


async def uncount(session: AsyncSession, campaign: CampaignFacts, customer: str) -> None:
    """A grant that ended with nothing given (every delivery after a failed one could not
    serve) is no reward: it no longer counts against the customer's limit, nor makes them a
    returning participant (of the campaign, or of its participant group)."""
    rules = reward_rules(campaign)
    scopes: list[tuple[Any, Any, str]] = [(RewardHolding, RewardHolding.campaign_id, campaign.id)]
    if rules.participant_group is not None:
        scopes.append(
            (RewardParticipant, RewardParticipant.participant_group, rules.participant_group)
        )
    for model, scope, value in scopes:
        await session.execute(
            update(model)
            .where(scope == value, model.customer_id == customer, model.granted > 0)
            .values(granted=model.granted - 1)
            .execution_options(synchronize_session=False)
        )


@per_dialect
def _insert_grant_statement(dialect: str) -> Any:
    return (
        db_insert(dialect, _GRANTS)
        .on_conflict_do_nothing(index_elements=["campaign_id", "customer_id", "trigger_key"])
        .returning(_GRANTS.c.id)
    )


async def find_grant(
    session: AsyncSession, campaign_id: str, customer: str, trigger_key: str
) -> RewardGrant | None:
    found: RewardGrant | None = await session.scalar(
        select(RewardGrant).where(
            RewardGrant.campaign_id == campaign_id,
            RewardGrant.customer_id == customer,
            RewardGrant.trigger_key == trigger_key,
        )
    )
    return found


# --------------------------------------------------------------------------- the grant


class Duplicate(Exception):
    """The trigger was granted by a concurrent twin that committed first: roll back (the
    unit taken goes back) and answer the twin's grant."""


def check_rewarding(campaign: CampaignFacts) -> None:
    now = utcnow()
    if campaign.status != "active":
        raise NotRewarding(
            f"campaign {campaign.id} is {campaign.status}", campaign_status=campaign.status
        )
    if not campaign.starts_at <= now < campaign.ends_at:
        raise NotRewarding(
            "outside the campaign's window",
            starts_at=campaign.starts_at.isoformat(),
            ends_at=campaign.ends_at.isoformat(),
        )


async def give(
    session: AsyncSession,
    engine: StockEngine,
    chain: Chain,
    customer: str,
    trigger_key: str,
) -> RewardGrant:
    """Give ``customer`` the first reward of the chain that suits and serves (see the module
    docstring). Raises ``RewardLimitReached`` (the campaign's per-customer limit: a trigger
    already granted answers with its grant instead), ``NoRewardAvailable`` (nothing served;
    ``chain`` says why each was skipped), ``Duplicate`` (roll back and answer the twin),
    ``ServiceUnavailable`` (a reward's stock is missing from the stock store). Every refusal
    leaves nothing taken once the transaction rolls back."""
    campaign, rules = chain.campaign, chain.rules
    count = await _count(
        session, _HOLDINGS, "campaign_id", campaign.id, customer, rules.per_user_limit
    )
    if count is None:
        existing = await find_grant(session, campaign.id, customer, trigger_key)
        if existing is not None:
            raise Duplicate()
        metrics.GRANTS.labels("limit-reached").inc()
        raise RewardLimitReached(
            f"at most {rules.per_user_limit} rewards per customer from this campaign",
            limit=rules.per_user_limit,
        )
    if rules.participant_group is not None:
        count = await _count(
            session,
            _PARTICIPANTS,
            "participant_group",
            rules.participant_group,
            customer,
            MAX_STOCK,
        )
        assert count is not None
    user_type = "first_time" if count == 1 else "returning"
    grant_id = new_id()
    walk = await walk_chain(session, engine, campaign, chain.items, customer, user_type, grant_id)
    if walk.item is None:
        metrics.GRANTS.labels("no-reward-available").inc()
        raise NoRewardAvailable(
            "no reward of the chain can be given now", user_type=user_type, chain=walk.steps
        )
    now = utcnow()
    row = {
        "id": grant_id,
        "campaign_id": campaign.id,
        "customer_id": customer,
        "trigger_key": trigger_key,
        "user_type": user_type,
        **walk.held(),
        "chain": walk.steps,
        "fallbacks": walk.skipped,
        "day": now.date().isoformat(),
        "created_at": now,
        "updated_at": now,
    }
    inserted = await session.execute(_insert_grant_statement(session), row)
    if inserted.first() is None:
        raise Duplicate()
    metrics.GRANTS.labels(walk.item.type).inc()
    return RewardGrant(**row)


async def walk_chain(
    session: AsyncSession,
    engine: StockEngine,
    campaign: CampaignFacts,
    items: Sequence[Item],
    customer: str,
    user_type: str,
    grant_id: str,
) -> Walk:
    """Try ``items`` in order for a customer of ``user_type``; the first that serves is
    delivered and its unit held until the commit (the others' given back at once)."""
    walk = Walk()
    user = stock_user(customer)
    for item in items:
        if item.audience not in ("any", user_type):
            walk.skip(item, "audience")
            continue
        pool = pool_of(campaign.id, item.code)
        limit = item.per_user_limit or MAX_STOCK
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(_FENCE_SHARED, {"pool": pool})
        try:
            deduction = await engine.take_within_quota(pool, user, 1, limit)
        except SoldOut:
            walk.skip(item, "out-of-stock")
            continue
        except StockPoolMissing:
            raise ServiceUnavailable(
                f"the stock of reward {item.code} is missing from the stock store; it is "
                "being rebuilt",
                retry_after=2,
                reward=item.code,
            ) from None
        if deduction is None:
            walk.skip(item, "limit-reached")
            continue
        try:
            refusal = await _deliver(session, campaign, item, customer, grant_id, walk)
        except BaseException:
            await compensate(engine, deduction, user)
            raise
        if refusal is not None:
            await compensate(engine, deduction, user)
            walk.skip(item, refusal)
            continue
        keep_if_committed(session, engine, deduction, user)
        walk.item, walk.deduction = item, deduction
        walk.steps.append({"code": item.code, "result": "given", "reason": None})
        return walk
    return walk


async def _deliver(
    session: AsyncSession,
    campaign: CampaignFacts,
    item: Item,
    customer: str,
    grant_id: str,
    walk: Walk,
) -> str | None:
    """Deliver ``item``; None when it was (``walk`` gets the state and the reference), else
    the reason it could not be."""
    if item.delivery == "ledger":
        rules = reward_rules(campaign)
        if campaign.budget_account_id is None:
            return "budget-exhausted"
        accounts = await ledger.open_accounts(
            session, owner_type="user", owner_ids=[customer], asset=rules.budget_asset
        )
        try:
            transfer = await ledger.transfer(
                session,
                idempotency_key=f"reward:{grant_id}",
                debit_account_id=campaign.budget_account_id,
                credit_account_id=accounts[customer],
                amount=item.amount,
                kind="reward",
                reference=f"campaign:{campaign.id}",
                metadata={"campaign_id": campaign.id, "grant_id": grant_id, "reward": item.code},
            )
        except InsufficientFunds:
            return "budget-exhausted"
        except BalanceLimit:
            return "delivery-failed"
        walk.delivery_ref = str(transfer.id)
        return None
    if item.delivery in ("coupon_wallet", "third_party"):
        assert item.batch_id is not None
        actor = coupons.Actor(f"reward:{campaign.id}", "system")
        try:
            async with session.begin_nested():
                coupon = await coupons.issue(
                    session, item.batch_id, customer, actor, f"reward {item.code}"
                )
        except (CouponsExhausted, BatchClosed):
            return "out-of-stock"
        except ClaimLimitReached:
            return "limit-reached"
        except BatchNotFound:
            return "delivery-failed"
        walk.delivery_ref = coupon.id
        walk.state = "delivering" if coupon.state == "activating" else "granted"
        return None
    assert item.delivery == "message"
    if not live_config.get(MESSAGE_WEBHOOK_URL):
        return "delivery-failed"
    await events.publish(
        session,
        MESSAGE_TOPIC,
        {
            "grant_id": grant_id,
            "campaign_id": campaign.id,
            "customer_id": customer,
            "reward": item.code,
            "title": item.title,
            "message": item.message,
        },
        key=grant_id,
    )
    walk.delivery_ref = grant_id
    walk.state = "delivering"
    return None
