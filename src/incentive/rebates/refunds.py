"""Reversing rebates on refunds.

Contract:

- ``reverse`` answers a refund of a rebated payment: each part is reversed in proportion to
  the refunded share of the payment (cumulative over partial refunds, floor division, so the
  parts reversed never exceed the parts paid), moved back to the budget by ledger transfers.
  What a party has already spent is not forced: the reversal takes what the balance holds and
  records the rest as ``shortfall_fen``. The payout row is locked first, so concurrent refunds
  of one payment reverse in turn.
- Nothing here commits.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from incentive.campaigns.kinds import ActivityFacts, CampaignFacts, Outcome
from incentive.ledger import service as ledger
from incentive.ledger.errors import InsufficientFunds
from incentive.rebates.models import RebatePayout
from incentive.rebates.service import ASSET


async def reverse(session: AsyncSession, campaign: CampaignFacts, refund: ActivityFacts) -> Outcome:
    """Reverse the rebate of the refunded payment in proportion (see the module contract)."""
    if refund.refers_to is None or refund.amount_fen is None:
        return Outcome.refused("not-rebated")
    payout = await session.scalar(
        select(RebatePayout)
        .filter_by(campaign_id=campaign.id, activity_id=refund.refers_to)
        .with_for_update()
    )
    if payout is None:
        return Outcome.refused("not-rebated")
    refunded = min(payout.payment_fen, payout.refunded_fen + refund.amount_fen)
    if refunded == payout.refunded_fen:
        return Outcome.refused("already-refunded")
    assert campaign.budget_account_id is not None
    reversed_now: dict[str, int] = {}
    shortfall = 0
    for part, owner_type, owner in (
        ("user", "user", payout.customer),
        ("merchant", "merchant", payout.merchant),
        ("staff", "user", payout.staff),
    ):
        paid = getattr(payout, f"{part}_fen")
        owed = paid * refunded // payout.payment_fen - getattr(payout, f"reversed_{part}_fen")
        if owed <= 0 or owner is None:
            continue
        taken = await _take_back(
            session,
            campaign,
            refund,
            part,
            owner_type,
            owner,
            owed,
        )
        reversed_now[part] = taken
        shortfall += owed - taken
        setattr(payout, f"reversed_{part}_fen", getattr(payout, f"reversed_{part}_fen") + owed)
    payout.refunded_fen = refunded
    payout.shortfall_fen += shortfall
    await session.flush()
    return Outcome(
        "reversed",
        detail={
            "payment_id": payout.payment_id,
            "refunded_fen": refunded,
            "reversed_fen": reversed_now,
            "shortfall_fen": shortfall,
        },
    )


async def _take_back(
    session: AsyncSession,
    campaign: CampaignFacts,
    refund: ActivityFacts,
    part: str,
    owner_type: str,
    owner: str,
    owed: int,
) -> int:
    """Move up to ``owed`` from the party back to the budget: what its balance holds now."""
    assert campaign.budget_account_id is not None
    account = await ledger.find_account(session, owner_type=owner_type, owner_id=owner, asset=ASSET)
    for _ in range(5):
        balance = 0 if account is None else (await ledger.get_account(session, account.id)).balance
        amount = min(owed, max(balance, 0))
        if amount == 0 or account is None:
            return 0
        try:
            await ledger.transfer(
                session,
                idempotency_key=f"rebate-reversal:{campaign.id}:{refund.id}:{part}",
                debit_account_id=account.id,
                credit_account_id=campaign.budget_account_id,
                amount=amount,
                kind="rebate.reversal",
                reference=f"campaign:{campaign.id}",
                metadata={
                    "campaign_id": campaign.id,
                    "refund_id": refund.external_id,
                    "part": part,
                },
            )
        except InsufficientFunds:  # spent meanwhile: look at the balance again
            continue
        return amount
    return 0
