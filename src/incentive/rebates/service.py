"""Paying two-way rebates; the campaign report (refunds: ``refunds.py``).

Contract:

- ``pay`` answers one payment for one campaign (called by the kind, once per (campaign,
  activity), in the activity's unit of work). A payment at a merchant that joined the campaign
  (redeemed a join code, or owns the campaign), of an eligible category, of at least the
  minimum, pays the customer, the merchant and the staff member their parts from the budget
  in one ledger batch: all three or none. Parts are cut to the per-payment cap and to what the
  customer's and the merchant's caps leave; every cut, count and transfer happens inside one
  savepoint (when the rules have caps), so a budget that cannot cover the whole rebate
  (``budget-exhausted``) or caps that leave nothing (``cap-reached``) move nothing and count
  nothing (the parties' accounts may have been opened, empty). The ledger keys
  ``rebate:<campaign>:<activity>:<part>`` make a second payout of one payment impossible even
  past the outcome row.
- Nothing here commits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns.kinds import ActivityFacts, CampaignFacts, Outcome
from incentive.db import insert, utcnow
from incentive.join_codes import service as join_codes
from incentive.kit.pagination import KeyInt, Keyset, Slice
from incentive.ledger import service as ledger
from incentive.ledger.errors import InsufficientFunds
from incentive.rebates.models import RebatePayout, RebateTotal
from incentive.rebates.rules import RebateRules

ASSET = "CNY"
WHOLE_CAMPAIGN = "*"


@dataclass(frozen=True)
class Parts:
    user: int
    merchant: int
    staff: int

    @property
    def total(self) -> int:
        return self.user + self.merchant + self.staff


def rebate_parts(rules: RebateRules, amount_fen: int, with_staff: bool) -> Parts:
    """The three parts of a payment's rebate, cut to ``max_rebate_fen`` in proportion."""
    user = amount_fen * rules.user_rebate_bp // 10_000
    merchant = amount_fen * rules.merchant_rebate_bp // 10_000
    staff = amount_fen * rules.staff_rebate_bp // 10_000 if with_staff else 0
    total = user + merchant + staff
    if total > rules.max_rebate_fen:
        cap = rules.max_rebate_fen
        user, merchant, staff = (p * cap // total for p in (user, merchant, staff))
    return Parts(user, merchant, staff)


async def joined(session: AsyncSession, campaign: CampaignFacts, merchant: str) -> bool:
    """A merchant's own campaign is its own to pay from; others join by a code."""
    if campaign.owner_type == "merchant" and campaign.merchant_id == merchant:
        return True
    return await join_codes.has_joined(session, campaign.id, merchant)


def _has_caps(rules: RebateRules) -> bool:
    return any(
        cap is not None
        for cap in (
            rules.customer_daily_cap_fen,
            rules.customer_campaign_cap_fen,
            rules.merchant_daily_cap_fen,
            rules.merchant_campaign_cap_fen,
        )
    )


async def _eligible(
    session: AsyncSession,
    campaign: CampaignFacts,
    payment: ActivityFacts,
    joined_merchants: dict[str, bool],
) -> Parts | Outcome:
    """The payment's parts, or the refusal that no count or budget can change."""
    rules = campaign.rules
    assert isinstance(rules, RebateRules)
    assert payment.merchant is not None
    assert payment.amount_fen is not None
    category = payment.attributes.get("merchant_category")
    if rules.merchant_categories and category not in rules.merchant_categories:
        return Outcome.refused("category-not-eligible", merchant_category=category)
    if payment.amount_fen < rules.min_payment_fen:
        return Outcome.refused("below-minimum", min_payment_fen=rules.min_payment_fen)
    if payment.merchant not in joined_merchants:
        joined_merchants[payment.merchant] = await joined(session, campaign, payment.merchant)
    if not joined_merchants[payment.merchant]:
        return Outcome.refused("not-joined", merchant=payment.merchant)
    parts = rebate_parts(rules, payment.amount_fen, payment.staff is not None)
    if parts.total == 0:
        return Outcome.refused("below-minimum", rebate_fen=0)
    return parts


def _rewarded(campaign: CampaignFacts, payment: ActivityFacts, paid: Parts, full: Parts) -> Outcome:
    return Outcome(
        "rewarded",
        detail={
            "user_fen": paid.user,
            "merchant_fen": paid.merchant,
            "staff_fen": paid.staff,
            "total_fen": paid.total,
            "capped": paid != full,
            "transfers": [key for key, _, _, _ in _parts_of(campaign, payment, paid)],
        },
    )


async def pay(session: AsyncSession, campaign: CampaignFacts, payment: ActivityFacts) -> Outcome:
    """Rebate one payment (see the module contract)."""
    eligible = await _eligible(session, campaign, payment, {})
    if isinstance(eligible, Outcome):
        return eligible
    rules = campaign.rules
    assert isinstance(rules, RebateRules)
    # Without caps nothing is written before the ledger batch, which leaves nothing when it
    # refuses: no savepoint (two round trips) needed.
    try:
        async with session.begin_nested() if _has_caps(rules) else contextlib.nullcontext():
            paid = await _within_caps(session, campaign.id, rules, payment, eligible)
            if paid.total == 0:
                raise _CapReached
            await _pay_out(session, campaign, [(payment, paid)])
    except _CapReached:
        return Outcome.refused("cap-reached")
    except InsufficientFunds:
        return Outcome.refused("budget-exhausted", rebate_fen=eligible.total)
    return _rewarded(campaign, payment, paid, eligible)


async def pay_many(
    session: AsyncSession, campaign: CampaignFacts, payments: list[ActivityFacts]
) -> list[Outcome]:
    """Rebate several payments, answering as ``pay`` would one by one in this order.

    Without caps, the eligible payments are paid in one ledger batch (accounts opened
    set-based, one ``batch_transfer``, one insert of payouts) inside a savepoint; when the
    budget cannot cover all of them the savepoint is rolled back and they are paid one by
    one, so each gets the answer it would have had alone. With caps, one by one.
    """
    rules = campaign.rules
    assert isinstance(rules, RebateRules)
    if len(payments) < 2 or _has_caps(rules):
        return [await pay(session, campaign, p) for p in payments]
    answers: dict[int, Outcome] = {}
    eligible: list[tuple[ActivityFacts, Parts]] = []
    joined_merchants: dict[str, bool] = {}
    for payment in payments:
        found = await _eligible(session, campaign, payment, joined_merchants)
        if isinstance(found, Outcome):
            answers[payment.id] = found
        else:
            eligible.append((payment, found))
    try:
        async with session.begin_nested():
            await _pay_out(session, campaign, eligible)
    except InsufficientFunds:
        for payment, _ in eligible:
            answers[payment.id] = await pay(session, campaign, payment)
    else:
        for payment, parts in eligible:
            answers[payment.id] = _rewarded(campaign, payment, parts, parts)
    return [answers[p.id] for p in payments]


class _CapReached(Exception):
    """Rolls the savepoint back when the caps leave nothing to pay."""


async def _within_caps(
    session: AsyncSession,
    campaign_id: str,
    rules: RebateRules,
    payment: ActivityFacts,
    parts: Parts,
) -> Parts:
    """Parts cut to what the caps leave, with the totals counted (rows locked in key order:
    customer's before merchant's, each day's before the whole campaign's)."""
    day = (payment.occurred_at + timedelta(minutes=rules.cap_day_offset_minutes)).date().isoformat()
    user = await _take(
        session,
        campaign_id,
        "customer",
        payment.customer,
        parts.user,
        {day: rules.customer_daily_cap_fen, WHOLE_CAMPAIGN: rules.customer_campaign_cap_fen},
    )
    assert payment.merchant is not None
    merchant = await _take(
        session,
        campaign_id,
        "merchant",
        payment.merchant,
        parts.merchant,
        {day: rules.merchant_daily_cap_fen, WHOLE_CAMPAIGN: rules.merchant_campaign_cap_fen},
    )
    return Parts(user, merchant, parts.staff)


async def _take(
    session: AsyncSession,
    campaign_id: str,
    party: str,
    party_id: str,
    wanted: int,
    caps: dict[str, int | None],
) -> int:
    """Count up to ``wanted`` against the party's capped totals; the amount it may have."""
    capped = {day: cap for day, cap in sorted(caps.items()) if cap is not None}
    if not capped or wanted == 0:
        return wanted
    key = {"campaign_id": campaign_id, "party": party, "party_id": party_id}
    totals = {}
    for day in capped:
        await session.execute(
            insert(session, RebateTotal).values(**key, day=day, paid_fen=0).on_conflict_do_nothing()
        )
        totals[day] = await session.scalar(
            select(RebateTotal.paid_fen).filter_by(**key, day=day).with_for_update()
        )
    allowed = min(wanted, *(capped[d] - int(totals[d] or 0) for d in capped))
    allowed = max(allowed, 0)
    if allowed:
        for day in capped:
            await session.execute(
                update(RebateTotal)
                .filter_by(**key, day=day)
                .values(paid_fen=RebateTotal.paid_fen + allowed)
            )
    return allowed


def _parts_of(
    campaign: CampaignFacts, payment: ActivityFacts, parts: Parts
) -> list[tuple[str, str, str, int]]:
    """(ledger key, owner type, owner id, amount) of each part above zero."""
    assert payment.merchant is not None
    found = [
        ("user", "user", payment.customer, parts.user),
        ("merchant", "merchant", payment.merchant, parts.merchant),
    ]
    if payment.staff is not None:
        found.append(("staff", "user", payment.staff, parts.staff))
    return [
        (f"rebate:{campaign.id}:{payment.id}:{part}", owner_type, owner, amount)
        for part, owner_type, owner, amount in found
        if amount > 0
    ]


async def _pay_out(
    session: AsyncSession, campaign: CampaignFacts, paid: list[tuple[ActivityFacts, Parts]]
) -> None:
    """Pay every part of ``paid`` from the budget in one ledger batch and record the payouts
    (all or nothing: ``InsufficientFunds`` leaves nothing of the batch)."""
    assert campaign.budget_account_id is not None
    planned = [(payment, _parts_of(campaign, payment, parts)) for payment, parts in paid]
    accounts: dict[tuple[str, str], int] = {}
    for owner_type in ("user", "merchant"):
        owners = {o for _, parts in planned for _, t, o, _ in parts if t == owner_type}
        if owners:
            opened = await ledger.open_accounts(
                session, owner_type=owner_type, owner_ids=owners, asset=ASSET
            )
            accounts.update({(owner_type, o): i for o, i in opened.items()})
    items = [
        ledger.TransferItem(
            idempotency_key=key,
            debit_account_id=campaign.budget_account_id,
            credit_account_id=accounts[owner_type, owner],
            amount=amount,
            kind="rebate",
            reference=f"campaign:{campaign.id}",
            metadata={
                "campaign_id": campaign.id,
                "payment_id": payment.external_id,
                "part": key.rsplit(":", 1)[1],
            },
        )
        for payment, parts in planned
        for key, owner_type, owner, amount in parts
    ]
    await ledger.batch_transfer(session, items)
    now = utcnow()
    await session.execute(
        insert(session, RebatePayout.__table__),
        [
            {
                "campaign_id": campaign.id,
                "activity_id": payment.id,
                "payment_id": payment.external_id,
                "customer": payment.customer,
                "merchant": payment.merchant,
                "staff": payment.staff,
                "payment_fen": payment.amount_fen,
                "user_fen": parts.user,
                "merchant_fen": parts.merchant,
                "staff_fen": parts.staff,
                "refunded_fen": 0,
                "reversed_user_fen": 0,
                "reversed_merchant_fen": 0,
                "reversed_staff_fen": 0,
                "shortfall_fen": 0,
                "paid_at": now,
            }
            for payment, parts in paid
        ],
    )


# --------------------------------------------------------------------------- reading


PAYOUT_ORDER = Keyset((RebatePayout.activity_id,), tuple[KeyInt])


async def payouts(
    session: AsyncSession,
    campaign_id: str,
    *,
    merchant: str | None = None,
    customer: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Slice[RebatePayout]:
    stmt = select(RebatePayout).where(RebatePayout.campaign_id == campaign_id)
    if merchant is not None:
        stmt = stmt.where(RebatePayout.merchant == merchant)
    if customer is not None:
        stmt = stmt.where(RebatePayout.customer == customer)
    return await PAYOUT_ORDER.fetch(session, stmt, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class Totals:
    payments: int
    paid: dict[str, int]
    reversed: dict[str, int]
    refunded_fen: int
    shortfall_fen: int


async def totals(session: AsyncSession, campaign_id: str) -> Totals:
    c = RebatePayout
    row = (
        await session.execute(
            select(
                func.count(),
                *(
                    func.coalesce(func.sum(col), 0)
                    for col in (
                        c.user_fen,
                        c.merchant_fen,
                        c.staff_fen,
                        c.reversed_user_fen,
                        c.reversed_merchant_fen,
                        c.reversed_staff_fen,
                        c.refunded_fen,
                        c.shortfall_fen,
                    )
                ),
            ).where(c.campaign_id == campaign_id)
        )
    ).one()
    n, pu, pm, ps, ru, rm, rs, refunded, shortfall = (int(v) for v in row)
    return Totals(
        payments=n,
        paid={"user": pu, "merchant": pm, "staff": ps},
        reversed={"user": ru, "merchant": rm, "staff": rs},
        refunded_fen=refunded,
        shortfall_fen=shortfall,
    )


def detail_of(payout: RebatePayout) -> dict[str, Any]:
    return {
        "payment_id": payout.payment_id,
        "customer": payout.customer,
        "merchant": payout.merchant,
        "staff": payout.staff,
        "payment_fen": payout.payment_fen,
        "paid": {
            "user": payout.user_fen,
            "merchant": payout.merchant_fen,
            "staff": payout.staff_fen,
        },
        "refunded_fen": payout.refunded_fen,
        "reversed": {
            "user": payout.reversed_user_fen,
            "merchant": payout.reversed_merchant_fen,
            "staff": payout.reversed_staff_fen,
        },
        "shortfall_fen": payout.shortfall_fen,
        "paid_at": payout.paid_at,
    }
