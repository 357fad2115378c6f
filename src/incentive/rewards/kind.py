"""The ``reward`` campaign kind: the live chain opened at activation, rewards given on the
activities a campaign listens to, and what happens when a delivery fails for good.

- ``on_activate``: the approved rewards become the live chain, stock split (first time).
- ``on_activity``: a ``signup``, ``payment`` (from ``min_payment_fen``), ``task_completed``
  or ``custom`` activity the campaign's ``triggers`` name gives its customer a reward
  (``grants.give``, in a savepoint: a refusal is an outcome and leaves nothing).
- ``coupon.failed`` (a provider's coupon given as a reward will never be issued): that
  reward's unit goes back to its stock once the change commits, and the grant walks on to
  the rewards of the chain it has not tried — the customer never keeps something unusable;
  a grant left with nothing no longer counts against the customer's limit.
- ``coupon.usable`` (the provider issued a coupon given as a reward): the grant waiting on
  it is ``delivered``; if the grant fell back before that word came, the coupon is revoked
  (at the provider too): the fallback stands.
- ``rewards.message``: a message reward is POSTed to the configured webhook (retried by the
  outbox until it is accepted).
"""

from __future__ import annotations

import json
import logging

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from incentive import events
from incentive.campaigns import service as campaigns
from incentive.campaigns.kinds import (
    ActivityFacts,
    CampaignFacts,
    CampaignKind,
    KindRules,
    Outcome,
    register_kind,
)
from incentive.config import live_config
from incentive.coupons import service as coupon_service
from incentive.coupons.errors import CouponNotUsable
from incentive.coupons.providers import USABLE_TOPIC
from incentive.coupons.service import FAILED_TOPIC
from incentive.db import utcnow
from incentive.kit import webhooks
from incentive.rewards import grants, metrics, service
from incentive.rewards.errors import NoRewardAvailable, RewardLimitReached
from incentive.rewards.keys import MESSAGE_WEBHOOK_URL
from incentive.rewards.models import RewardGrant, RewardItem
from incentive.rewards.rules import TRIGGERS, RewardRules, reward_rules
from incentive.settings import get_settings
from incentive.stock import runtime
from incentive.stock.engine import Deduction, Take
from incentive.stock.holds import give_back_if_committed

log = logging.getLogger(__name__)

MESSAGE_TIMEOUT_SECONDS = 5.0


class RewardKind(CampaignKind):
    name = "reward"
    rules = RewardRules
    consumes = frozenset(TRIGGERS)

    def budget_asset(self, rules: KindRules) -> str:
        assert isinstance(rules, RewardRules)
        return rules.budget_asset

    def listens_to(self, campaign: CampaignFacts, activity_type: str) -> bool:
        return activity_type in reward_rules(campaign).triggers

    async def on_activate(self, session: AsyncSession, campaign: CampaignFacts) -> None:
        await service.open_chain(session, runtime.current(), campaign)

    async def on_activity(
        self, session: AsyncSession, campaign: CampaignFacts, activity: ActivityFacts
    ) -> Outcome:
        rules = reward_rules(campaign)
        if (
            campaign.owner_type == "merchant"
            and activity.merchant is not None
            and activity.merchant != campaign.merchant_id
        ):
            return Outcome.refused("other-merchant")  # a merchant rewards what it took part in
        if activity.type == "payment" and (activity.amount_fen or 0) < rules.min_payment_fen:
            return Outcome.refused("below-minimum", min_payment_fen=rules.min_payment_fen)
        chain = grants.Chain(campaign, await grants.live_items(session, campaign.id), 0.0)
        try:
            async with session.begin_nested():
                grant = await grants.give(
                    session, runtime.current(), chain, activity.customer, f"activity:{activity.id}"
                )
        except RewardLimitReached:
            return Outcome.refused("limit-reached", limit=rules.per_user_limit)
        except NoRewardAvailable as refusal:
            return Outcome.refused("no-reward-available", **refusal.extra)
        return Outcome("rewarded", detail=outcome_detail(grant))


def outcome_detail(grant: RewardGrant) -> dict[str, object]:
    return {
        "grant_id": grant.id,
        "reward": grant.reward_code,
        "type": grant.type,
        "amount": grant.amount,
        "user_type": grant.user_type,
        "state": grant.state,
        "chain": grant.chain,
    }


async def fall_back(session: AsyncSession, event: events.Event) -> None:
    """Subscriber of ``coupon.failed``: the grant holding that coupon gives its unit back and
    walks on through the live rewards it has not tried (nothing left: the grant is
    ``failed``)."""
    coupon_id = str(event.payload["coupon_id"])
    grant = await session.scalar(
        select(RewardGrant)
        .where(RewardGrant.delivery_ref == coupon_id, RewardGrant.state == "delivering")
        .with_for_update()
    )
    if grant is None or grant.reward_code is None:
        return
    engine = runtime.current()
    failed = await session.get(RewardItem, (grant.campaign_id, grant.reward_code))
    assert failed is not None
    taken = Deduction(
        grants.pool_of(grant.campaign_id, failed.code),
        1,
        tuple(Take(int(b), int(q)) for b, q in grant.takes),
    )
    give_back_if_committed(session, engine, taken, grants.stock_user(grant.customer_id))
    metrics.SKIPS.labels("delivery-failed").inc()
    steps = [
        *grant.chain,
        {
            "code": failed.code,
            "result": "failed",
            "reason": "delivery-failed",
            "coupon_id": coupon_id,
        },
    ]
    campaign = await campaigns.campaign_facts(session, grant.campaign_id)
    # The live rewards this grant has not tried yet, in the chain's order now (a reorder
    # or an addition since the grant is followed; nothing is tried twice).
    tried = {str(step["code"]) for step in grant.chain}
    rest = [i for i in await grants.live_items(session, grant.campaign_id) if i.code not in tried]
    walk = await grants.walk_chain(
        session, engine, campaign, rest, grant.customer_id, grant.user_type, grant.id
    )
    grant.chain = steps + walk.steps
    grant.fallbacks = grant.fallbacks + 1 + walk.skipped
    grant.updated_at = utcnow()
    for column, value in walk.held().items():
        setattr(grant, column, value)
    if walk.item is None:
        await grants.uncount(session, campaign, grant.customer_id)
        log.warning(
            "reward delivery failed and no reward was left to give",
            extra={"grant_id": grant.id, "campaign_id": grant.campaign_id},
        )
    await session.flush()


async def delivered(session: AsyncSession, event: events.Event) -> None:
    """Subscriber of ``coupon.usable``: the grant still waiting on that coupon is
    ``delivered``. A grant that fell back meanwhile (the provider's word came after we gave
    up: a late webhook, or reconciliation) already gave the customer the next reward and the
    coupon's unit back to stock: that coupon is revoked, at the provider too, so the customer
    never holds two rewards for one grant nor the reward beyond its stock."""
    coupon_id = str(event.payload["coupon_id"])
    moved = await session.execute(
        update(RewardGrant)
        .where(
            RewardGrant.delivery_ref == coupon_id,
            RewardGrant.delivery == "third_party",
            RewardGrant.state == "delivering",
        )
        .values(state="delivered", updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(moved, "rowcount", 0):
        return
    customer = str(event.payload.get("customer_id") or "")
    fell_back = await session.scalars(
        select(RewardGrant).where(RewardGrant.customer_id == customer)
    )
    if any(
        step.get("coupon_id") == coupon_id and step.get("result") == "failed"
        for grant in fell_back
        for step in grant.chain
    ):
        try:
            await coupon_service.revoke(
                session, coupon_id, None, "the reward fell back before the provider issued it"
            )
        except CouponNotUsable:
            return  # already used or revoked: nothing left to take back
        metrics.LATE_REVOKED.inc()
        log.warning(
            "a late coupon of a reward that fell back was revoked", extra={"coupon_id": coupon_id}
        )


async def send_message(session: AsyncSession, event: events.Event) -> None:
    """Subscriber of ``rewards.message``: POST the message to the webhook; anything but a
    2xx raises, and the outbox retries it later."""
    grant = await session.get(RewardGrant, str(event.payload["grant_id"]), with_for_update=True)
    if grant is None or grant.state != "delivering" or grant.delivery != "message":
        return
    url = live_config.get(MESSAGE_WEBHOOK_URL)
    if not url:
        raise RuntimeError("rewards.message_webhook_url is not set; the message waits for it")
    body = json.dumps(
        {"type": "reward.message", "data": dict(event.payload)}, separators=(",", ":")
    ).encode()
    headers = {"content-type": "application/json"}
    secret = get_settings().rewards_webhook_secret
    if secret is not None:
        headers |= webhooks.headers(secret.get_secret_value(), f"msg_{grant.id}", body)
    async with httpx.AsyncClient(timeout=MESSAGE_TIMEOUT_SECONDS) as client:
        answer = await client.post(url, content=body, headers=headers)
    answer.raise_for_status()
    grant.state, grant.updated_at = "delivered", utcnow()
    await session.flush()


register_kind(RewardKind())
events.subscribe(FAILED_TOPIC, "rewards.fall_back", fall_back)
events.subscribe(USABLE_TOPIC, "rewards.delivered", delivered)
events.subscribe(grants.MESSAGE_TOPIC, "rewards.send_message", send_message)
