"""A referral's rewards: who is paid, paid at once or held in escrow, released, or voided.

Contract:

- The payees of a completed referral are the referrer (side ``referrer``, level 1) and the
  referee (side ``referee``, level 0) when the rules reward them; with multi-level
  attribution on, the referrer's referrers up the chain fixed at acceptance (levels 2, 3),
  level ``k`` paid ``floor(referrer reward × rates_bp[k - 1] / 10,000)`` (a level whose share
  rounds to 0, or with no referrer above, is not paid). One ``referral_rewards`` row per
  payee, unique per (referral, side, level).
- Points and cash come from the campaign's budget in **one** ledger batch, all or nothing:
  if the budget cannot cover every payee of the referral, none of them is paid and each row
  is ``unpaid`` with ``budget-exhausted`` (never a partial set, never a negative budget).
  With a hold they move to the campaign's escrow account (``referral-escrow``), so the
  budget is spent at completion and a held reward can always be paid; without, straight to
  each payee's ``main`` account. Keys: ``referral:<reward>:hold|pay|release|void``.
- Coupons are issued through the coupons domain at payment time (at completion, or at
  release after a hold); a refused issue leaves the row ``unpaid`` with its reason
  (``out-of-stock``, ``limit-reached``, ``batch-closed``, ``batch-not-found``).
- ``release`` pays a held referral's pending rows (escrow → payee, coupons issued) and
  ``void`` returns them (escrow → budget; held coupons are never issued). Callers decide
  which of the two happens with one conditional update of the referral's state, so a
  referral is released or voided, never both.
- Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns.kinds import CampaignFacts
from incentive.coupons import service as coupons
from incentive.coupons.errors import (
    BatchClosed,
    BatchNotFound,
    ClaimLimitReached,
    CouponsExhausted,
)
from incentive.db import new_id, utcnow
from incentive.ledger import service as ledger
from incentive.ledger.errors import BalanceLimit, InsufficientFunds
from incentive.referrals.models import Referral, ReferralReward
from incentive.referrals.rules import ASSET_OF, ReferralRules, RewardSpec

ESCROW = "referral-escrow"
COUPON_REFUSALS: dict[type[Exception], str] = {
    CouponsExhausted: "out-of-stock",
    ClaimLimitReached: "limit-reached",
    BatchClosed: "batch-closed",
    BatchNotFound: "batch-not-found",
}


@dataclass(frozen=True)
class Payee:
    beneficiary_id: str
    side: str
    level: int
    spec: RewardSpec
    amount: int


async def payees(session: AsyncSession, rules: ReferralRules, referral: Referral) -> list[Payee]:
    """Who the completed ``referral`` pays, and how much (see the contract)."""
    found: list[Payee] = []
    spec = rules.reward("referrer")
    if spec is not None:
        if not rules.multi_level.enabled:
            found.append(Payee(referral.referrer_id, "referrer", 1, spec, spec.amount))
        else:
            beneficiary: str | None = referral.referrer_id
            parent_id = referral.parent_id
            for level, rate in enumerate(rules.multi_level.rates_bp, start=1):
                if beneficiary is None:
                    break
                amount = spec.amount * rate // 10_000
                if amount > 0:
                    found.append(Payee(beneficiary, "referrer", level, spec, amount))
                parent = None if parent_id is None else await session.get(Referral, parent_id)
                beneficiary = None if parent is None else parent.referrer_id
                parent_id = None if parent is None else parent.parent_id
    spec = rules.reward("referee")
    if spec is not None:
        found.append(Payee(referral.referee_id, "referee", 0, spec, spec.amount))
    return found


def _actor(campaign: CampaignFacts) -> coupons.Actor:
    return coupons.Actor(f"referral:{campaign.id}", "system")


async def _issue_coupons(
    session: AsyncSession, campaign: CampaignFacts, rows: Sequence[ReferralReward]
) -> None:
    for row in rows:
        assert row.coupon_batch_id is not None
        try:
            async with session.begin_nested():
                coupon = await coupons.issue(
                    session, row.coupon_batch_id, row.beneficiary_id, _actor(campaign), "referral"
                )
        except tuple(COUPON_REFUSALS) as exc:
            row.state, row.reason = "unpaid", COUPON_REFUSALS[type(exc)]
        else:
            row.state, row.coupon_id = "paid", coupon.id
        row.updated_at = utcnow()


def _items(
    campaign: CampaignFacts,
    rows: Sequence[ReferralReward],
    step: str,
    debit: dict[str, int],
    credit: dict[str, int],
) -> list[ledger.TransferItem]:
    return [
        ledger.TransferItem(
            f"referral:{row.id}:{step}",
            debit[row.beneficiary_id],
            credit[row.beneficiary_id],
            row.amount,
            kind="referral",
            reference=f"campaign:{campaign.id}",
            metadata={
                "campaign_id": campaign.id,
                "referral_id": row.referral_id,
                "side": row.side,
                "level": row.level,
            },
        )
        for row in rows
    ]


async def _escrow(session: AsyncSession, campaign: CampaignFacts, asset: str) -> int:
    account = await ledger.open_account(
        session, owner_type="campaign", owner_id=campaign.id, asset=asset, name=ESCROW
    )
    return account.id


async def _move(
    session: AsyncSession,
    campaign: CampaignFacts,
    rows: Sequence[ReferralReward],
    step: str,
    asset: str,
) -> str | None:
    """Move the ledger rows' amounts for ``step`` in one batch: ``hold`` budget → escrow,
    ``pay`` budget → payee, ``release`` escrow → payee, ``void`` escrow → budget. None when
    moved, else why not (nothing moved)."""
    if not rows:
        return None
    budget = campaign.budget_account_id
    if budget is None:
        return "budget-exhausted"
    payees = sorted({r.beneficiary_id for r in rows})
    escrow = None if step == "pay" else await _escrow(session, campaign, asset)
    if step in ("pay", "release"):
        debit = dict.fromkeys(payees, budget if escrow is None else escrow)
        credit = await ledger.open_accounts(
            session, owner_type="user", owner_ids=payees, asset=asset
        )
    else:
        assert escrow is not None
        debit = dict.fromkeys(payees, budget if step == "hold" else escrow)
        credit = dict.fromkeys(payees, escrow if step == "hold" else budget)
    try:
        async with session.begin_nested():
            await ledger.batch_transfer(session, _items(campaign, rows, step, debit, credit))
    except InsufficientFunds:
        return "budget-exhausted"
    except BalanceLimit:
        return "balance-limit"
    return None


async def give(
    session: AsyncSession,
    campaign: CampaignFacts,
    rules: ReferralRules,
    referral: Referral,
    now: datetime,
) -> list[ReferralReward]:
    """Pay (or, with ``hold_days``, hold) the completed referral's rewards; the rows."""
    held = rules.hold_days > 0
    rows = [
        ReferralReward(
            id=new_id(),
            referral_id=referral.id,
            campaign_id=campaign.id,
            beneficiary_id=p.beneficiary_id,
            side=p.side,
            level=p.level,
            type=p.spec.type,
            amount=p.amount,
            coupon_batch_id=p.spec.coupon_batch_id,
            state="pending",
            created_at=now,
            updated_at=now,
        )
        for p in await payees(session, rules, referral)
    ]
    money = [r for r in rows if r.type in ASSET_OF]
    refused = await _move(session, campaign, money, "hold" if held else "pay", rules.budget_asset)
    for row in money:
        row.state, row.reason = (
            ("unpaid", refused) if refused else ("pending" if held else "paid", None)
        )
    if not held:
        await _issue_coupons(session, campaign, [r for r in rows if r.type == "coupon"])
    session.add_all(rows)
    await session.flush()
    return rows


async def _pending(session: AsyncSession, referral_id: str) -> list[ReferralReward]:
    found = await session.scalars(
        select(ReferralReward)
        .where(ReferralReward.referral_id == referral_id, ReferralReward.state == "pending")
        .order_by(ReferralReward.side, ReferralReward.level)
    )
    return list(found)


async def release(
    session: AsyncSession, campaign: CampaignFacts, rules: ReferralRules, referral_id: str
) -> list[ReferralReward]:
    """Pay the held rewards of a referral this caller moved from ``pending`` to
    ``rewarded`` (escrow → payee, coupons issued)."""
    rows = await _pending(session, referral_id)
    money = [r for r in rows if r.type in ASSET_OF]
    refused = await _move(session, campaign, money, "release", rules.budget_asset)
    if refused is not None:
        # The escrow holds exactly what was held: this is a broken ledger, not a refusal.
        raise RuntimeError(f"referral {referral_id}: escrow refused the release ({refused})")
    now = utcnow()
    for row in money:
        row.state, row.updated_at = "paid", now
    await _issue_coupons(session, campaign, [r for r in rows if r.type == "coupon"])
    await session.flush()
    return rows


async def void(
    session: AsyncSession, campaign: CampaignFacts, rules: ReferralRules, referral_id: str
) -> list[ReferralReward]:
    """Return the held rewards of a referral this caller moved from ``pending`` to
    ``voided`` (escrow → budget; held coupons are never issued)."""
    rows = await _pending(session, referral_id)
    money = [r for r in rows if r.type in ASSET_OF]
    refused = await _move(session, campaign, money, "void", rules.budget_asset)
    if refused is not None:
        raise RuntimeError(f"referral {referral_id}: escrow refused the void ({refused})")
    now = utcnow()
    for row in rows:
        row.state, row.reason, row.updated_at = "voided", "refunded", now
    await session.flush()
    return rows
